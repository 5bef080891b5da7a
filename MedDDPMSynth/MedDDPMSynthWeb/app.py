"""``medddpm-synth serve``: a trame-slicer app over the Slicer module's scene logic.

trame-slicer gives the MRML scene, the remote-rendered slice and 3-D views and the segment editor;
:class:`.session.WebSession` (i.e. SceneLogic) does every Med-DDPM step on that same scene. The MRML
scene is touched only from the server's event loop; the engine runs in its own process. One served
process is one session (every tab shows the same scene): run one per user.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from aiohttp import web
from trame.app import TrameApp
from trame.app.file_upload import ClientFile
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import LayoutButtonLogic
from trame_slicer.app.logic.segmentation import SegmentEditorLogic
from trame_slicer.core import SlicerApp
from trame_slicer.rca_view import register_rca_factories

from MedDDPMSynthLib.errors import MedDDPMError
from MedDDPMSynthSlicerLib import GenerationSettings
from MedDDPMSynthSlicerLib.jobs import PRESETS, duration_text

from . import security
from .move_mode import MoveMode
from .panel import SAMPLERS, SYNTH_TOOL, SynthUI
from .session import WebSession

TITLE = "MedDDPMSynth"
POLL_S = 0.3
MAX_SAMPLES = 8  # per request: one served process is shared, a page must not book it for hours


class SynthWebApp(TrameApp):
    def __init__(self, server=None, *, model: str = "demo", token: str | None = None,
                 upload_limit: int = security.DEFAULT_UPLOAD_LIMIT, work_dir: str | Path | None = None,
                 host: str = "127.0.0.1"):
        super().__init__(server)
        self.token, self.upload_limit, self.host = token, upload_limit, host
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_logic = LayoutButtonLogic(self.server, self.slicer_app)
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="medddpm_web_"))
        self.session = WebSession(self.slicer_app.scene, self.work_dir)
        self._watcher: asyncio.Task | None = None

        self.ui = SynthUI(self.server, self.layout_logic.layout_manager, TITLE, upload_limit=upload_limit)
        self.editor_logic.set_ui(self.ui.editor)
        self.layout_logic.set_ui(self.ui.layout_button)
        self.ui.upload.on_load_volume.connect(self.on_upload)
        self.ui.upload.on_rejected.connect(lambda message: self._show(error=message))
        self.state.synth_models = self._model_names()
        try:
            self.state.synth_model = self._checked_model(model)
        except MedDDPMError:
            self._close()  # no temporary folders left behind by a refused start
            raise
        ctrl = self.server.controller
        ctrl.synth_generate = lambda: self.request("generate")
        ctrl.synth_regenerate = lambda: self.request("regenerate")
        ctrl.synth_cancel = self.cancel
        for operation in ("shift", "scale", "remove", "undo"):
            ctrl[f"synth_{operation}"] = lambda operation=operation: self.edit(operation)
        self.move_mode = MoveMode(self)  # drag / scale the tumour in the slice views, Apply, Cancel
        ctrl.on_server_bind.add(self._bind_http)
        ctrl.on_server_exited.add(self._close)
        self.state.change("synth_model")(self._on_model_changed)
        self._on_model_changed(model)
        self.editor_logic.segmentation_editor.segmentation_modified.connect(self._on_painted)

    # ------------------------------------------------------------------------------------ HTTP

    def _bind_http(self, wslink_server) -> None:
        """Before the server starts: the token check on every request, and the zip download route."""
        app = wslink_server.app
        app[security.TOKEN_KEY] = self.token
        app[security.BIND_HOST_KEY] = self.host
        app[security.WS_PATHS_KEY] = security.websocket_paths(wslink_server)
        app.middlewares.append(security.token_middleware)
        security.bound_websocket_messages(wslink_server, self.upload_limit)
        app.router.add_get("/download", self._download)

    async def _download(self, _request: web.Request) -> web.Response:
        try:
            data = self.session.export_zip()
        except MedDDPMError as error:
            return web.Response(status=400, text=f"400: {error}")
        return web.Response(body=data, content_type="application/zip",
                            headers={"Content-Disposition": 'attachment; filename="medddpm_synth_pair.zip"'})

    # ---------------------------------------------------------------------------------- upload

    def on_upload(self, files: list[dict]) -> None:
        with self.state:
            try:
                entries = security.upload_entries(files)
                if len(entries) != 1:
                    raise security.UploadRejected("upload one mask file at a time")
                upload = ClientFile(entries[0])
                security.check_size(len(upload.content), self.upload_limit)
                path, image = security.sniff(upload.content, upload.name, self.work_dir)
            except security.UploadRejected as error:
                self._show(error=str(error))
                return
            try:
                name = Path(upload.name).name.split(".")[0] or "mask"
                self.session.load_mask(image, name, self._checked_model(self.state.synth_model))
                self._show_mask()
            except MedDDPMError as error:
                self._show(error=str(error))
                return
            finally:
                path.unlink(missing_ok=True)
                path.parent.rmdir()
            self._show()

    def _show_mask(self) -> None:
        """The mask's grey volume in the views and as the segment editor's source, tumour segment active."""
        session, editor = self.session, self.editor_logic.segmentation_editor
        self._show_volume(session.reference, reset=True)
        tumour = session.logic.segment_mapping(session.segmentation).tumour_segments()
        if tumour:  # the brush paints tumour by default
            editor.set_active_segment_id(tumour[0])
        self.ui.viewer.data.is_volume_loaded = True

    def _show_volume(self, volume, reset: bool = False) -> None:
        """``volume`` behind the segmentation in the slice views (SceneLogic's display), the segments as
        surfaces in 3-D, the segment editor painting on ``volume``; keeps the active segment."""
        session, editor = self.session, self.editor_logic.segmentation_editor
        active = editor.get_active_segment_id() if editor.active_segmentation is not None else ""
        editor.set_active_segmentation(session.segmentation, volume)
        session.logic.show_volumes([volume], session.segmentation)  # every slice view's background
        editor.set_surface_representation_enabled(True)  # the 3-D view shows the segments as surfaces
        display = session.segmentation.GetDisplayNode()
        tumour = session.logic.segment_mapping(session.segmentation).tumour_segments()
        for segment_id in editor.get_segment_ids():
            if segment_id not in tumour:
                display.SetSegmentOpacity3D(segment_id, 0.15)  # the head see-through, the tumour inside it
        if reset:
            self.slicer_app.display_manager.reset_views()
        if active and session.segmentation.GetSegmentation().GetSegment(active) is not None:
            editor.set_active_segment_id(active)

    def _on_painted(self, *_args) -> None:
        if not self.session.busy:
            self._show()

    # ------------------------------------------------------------------------------ generation

    def _model_names(self) -> list[str]:
        """The models a page may choose: the demo model and the catalogue's names, never a server path."""
        return [m["name"] for m in self.session.logic.available_models()]

    def _checked_model(self, name) -> str:
        """``name`` if it is in the model list, else a MedDDPMError naming the choices: a client may
        not name a file on the server (a path would be an existence oracle and load an arbitrary .pt)."""
        names = self._model_names()
        if not isinstance(name, str) or name not in names:
            raise MedDDPMError(f"unknown model '{str(name)[:80]}'; choose one of {', '.join(names)}")
        return name

    def _on_model_changed(self, synth_model, **_kwargs) -> None:
        """Fewer steps than the model's T (a model trained with T = 10 cannot take 25)."""
        try:
            timesteps = self.session.logic.model_timesteps(self._checked_model(synth_model))
        except MedDDPMError as error:
            self._show(error=str(error))  # Generate refuses it too
            return
        if timesteps and int(self.state.synth_steps or 0) > timesteps:
            self.state.synth_steps = timesteps
        if self.session.segmentation is not None:  # the loaded mask is now painted for this model's family
            self.session.logic.set_family(self.session.segmentation, synth_model)

    def _settings(self) -> GenerationSettings:
        sampler = str(self.state.synth_sampler or "preview")
        if sampler not in SAMPLERS:
            raise MedDDPMError(f"unknown sampler '{sampler}'; choose {', '.join(SAMPLERS)}")
        try:
            steps, samples, seed = (int(self.state[k] or 0) for k in ("synth_steps", "synth_samples", "synth_seed"))
        except (TypeError, ValueError):
            raise MedDDPMError("steps, samples and seed must be whole numbers") from None
        # the scene logic's policy (presets as the engine resolves them, steps, spacing by sampler); the served
        # app only caps the samples
        model = self._checked_model(self.state.synth_model)
        preset = next((label for label, name in PRESETS.items() if name == sampler), "Custom")
        return self.session.logic.settings_for(model, preset, sampler=sampler, steps=steps,
                                               samples=max(1, min(samples, MAX_SAMPLES)), seed=seed)

    def request(self, kind: str) -> None:
        """Queue a generation or local re-generation; a watcher task advances the queue and the progress."""
        try:
            self.session.request(kind, self._settings())
        except MedDDPMError as error:
            self._show(error=str(error))
            return
        self._show()
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        session = self.session
        while session.busy or session.queue:
            before = session.volumes
            session.tick()
            with self.state:
                if session.volumes and session.volumes is not before:  # a result arrived: paint on top of it
                    self._show_volume(session.volumes[0])
                self._show()
            await asyncio.sleep(POLL_S)


    def cancel(self) -> None:
        self.session.cancel()
        self._show()

    def edit(self, operation: str) -> None:
        """A tumour edit with the panel's values: shift by (R, A, S) mm, scale by a factor, remove, undo."""
        try:
            if operation == "shift":
                value = [float(v or 0) for v in self.state.synth_shift]
            elif operation == "scale":
                value = float(self.state.synth_scale or 1)
            else:
                value = None
            self.session.edit(operation, value)
        except (MedDDPMError, ValueError, TypeError) as error:
            self._show(error=f"{operation}: {error}")
            return
        self._show()

    def _close(self, **_kwargs) -> None:
        """Server stopped: stop a running job and delete the uploads and results kept on disk."""
        self.session.close()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _show(self, error: str | None = None) -> None:
        """Copy the session's status into the page's state (the panel reads only ``synth_*`` names)."""
        if error is not None:
            self.session.error = error
        status = self.session.status()
        self.state.update({
            "synth_mask": status["mask"], "synth_running": status["running"], "synth_kind": status["kind"],
            "synth_fraction": status["fraction"], "synth_eta": duration_text(status["eta"]), "synth_queued": status["queued"],
            "synth_result": status["result"], "synth_message": status["message"], "synth_error": status["error"],
            "synth_can_regenerate": status["can_regenerate"],
        })
        if not status["running"]:  # counting exports the segmentation: not at every progress tick
            self.state.synth_tumour_voxels = self.session.tumour_voxels()
        self.ui.viewer.data.active_tool = self.ui.viewer.data.active_tool or SYNTH_TOOL


def serve(host: str, port: int, token: str | None, model: str, upload_limit: int) -> None:
    app = SynthWebApp(model=model, token=token, upload_limit=upload_limit, host=host)
    query = f"?token={token}" if token else ""
    print(f"MedDDPMSynth web front on http://{host}:{port}/{query}", flush=True)
    app.server.start(host=host, port=port, open_browser=False, show_connection_info=False, disable_logging=True)
