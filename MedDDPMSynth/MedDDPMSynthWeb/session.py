"""The served session: the Slicer module's SceneLogic on the trame-slicer app's MRML scene, and a queue.

Every action is a SceneLogic call; this class only keeps the session's state (the uploaded mask as a
segmentation and a grey reference volume, the last result, the running job and the jobs waiting behind
it) so one generation runs at a time. The app's views and segment editor show and edit the same nodes.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import SimpleITK as sitk

from MedDDPMSynthLib.errors import MedDDPMError
from MedDDPMSynthSlicerLib import GenerationSettings, SceneLogic


#: generations that may wait behind the running one (each takes minutes on a GPU; a page clicking
#: Generate in a loop must not book the server for hours)
MAX_QUEUED = 3


class WebSession:
    def __init__(self, scene, work_dir: Path):
        self.work_dir = Path(tempfile.mkdtemp(prefix="session_", dir=work_dir))
        self.scene = scene
        self.logic = SceneLogic(self.scene, temp_dir=self.work_dir)
        self.segmentation = None
        self.reference = None  # the mask's labels as a grey volume: slice geometry and the editor's source
        self.mask_name = ""
        self.volumes: list = []
        self.job = None
        self.job_kind = ""
        self.queue: list[tuple[str, GenerationSettings]] = []
        self.message = ""
        self.error = ""
        self.done = False  # the last job finished and its result is in the scene
        self.move_translation, self.move_scale = [0.0, 0.0, 0.0], 1.0  # the move mode's drag and slider

    # --------------------------------------------------------------------------------- input

    def load_mask(self, image: sitk.Image, name: str, model: str = "demo") -> None:
        """A label image as a segmentation for ``model``'s family (SceneLogic.load_label_image); the previous
        mask and results leave the scene only once the new mask has been read."""
        if self.busy:
            raise MedDDPMError("a generation is running; cancel it before loading another mask")
        segmentation, reference = self.logic.load_label_image(image, name, model)
        if self.moving:  # the move's helper nodes go with the old mask
            self.logic.cancel_move(self.segmentation)
        self._remove_nodes([self.segmentation, self.reference, *self.volumes])
        self.segmentation, self.reference, self.mask_name, self.volumes = segmentation, reference, name, []
        self.done = False
        self.message, self.error = f"loaded {name}", ""

    def _remove_nodes(self, nodes) -> None:
        for node in nodes:
            if node is not None and self.scene.IsNodePresent(node):
                self.scene.RemoveNode(node)

    def tumour_voxels(self) -> int:
        """Voxels labelled tumour now (what the next Generate uses), shown in the page after each edit."""
        if self.segmentation is None:
            return 0
        return self.logic.tumour_voxels(self.segmentation)

    # ---------------------------------------------------------------------------- generation

    @property
    def busy(self) -> bool:
        return self.job is not None

    def request(self, kind: str, settings: GenerationSettings) -> None:
        """Queue a generation ('generate') or local re-generation ('regenerate'); starts it if idle.
        At most MAX_QUEUED wait behind the running one: more clicks are refused, not piled up."""
        if self.segmentation is None:
            raise MedDDPMError("load a mask first")
        if len(self.queue) >= MAX_QUEUED:
            raise MedDDPMError(f"{len(self.queue)} generations are already waiting (at most {MAX_QUEUED}); wait for "
                               "them or cancel")
        self.queue.append((kind, settings))
        self.done = False
        self.tick()

    def tick(self) -> None:
        """Advance the running job (progress lines) and start the next queued one when it ends."""
        if self.job is not None:
            self.job.poll()
            if self.job.running:
                return
            self._finish()
        while self.job is None and self.queue:
            kind, settings = self.queue.pop(0)
            try:
                start = self.logic.start_regeneration if kind == "regenerate" else self.logic.start_generation
                self.job, self.job_kind = start(self.segmentation, settings), kind
                self.message, self.error = f"{kind} running", ""
            except MedDDPMError as error:
                self.message, self.error = f"{kind} not started", str(error)

    def _finish(self) -> None:
        job, self.job = self.job, None
        try:
            nodes = self.logic.finish_generation(job)
        except MedDDPMError as error:
            self.message, self.error = f"{self.job_kind} failed", str(error)
            return
        self._remove_nodes([v for v in self.volumes if v not in nodes])  # a local re-generation updates in place
        self.volumes, self.done = nodes, True
        self.message, self.error = f"{self.job_kind} finished: {nodes[0].GetName()}", ""

    def cancel(self) -> None:
        """Cancel the running job and drop the queue; the scene stays as it was."""
        self.queue.clear()
        if self.job is not None:
            self.logic.cancel_generation(self.job)
            self.job = None
            self.message = "cancelled; nothing was added"

    def status(self) -> dict:
        job = self.job
        return {"mask": self.mask_name, "running": job is not None, "kind": self.job_kind if job else "",
                "fraction": job.fraction() if job else float(self.done), "eta": job.eta_seconds() if job else None,
                "queued": len(self.queue), "result": bool(self.volumes), "message": self.message,
                "error": self.error,
                "can_regenerate": self.segmentation is not None and self.logic.can_regenerate(self.segmentation)}

    # -------------------------------------------------------------------------------- edits

    def edit(self, operation: str, value) -> None:
        if self.busy:
            raise MedDDPMError("a generation is running; wait for it or cancel it before editing")
        if self.segmentation is None:
            raise MedDDPMError("load a mask first")
        if self.moving:
            raise MedDDPMError("the tumour is being moved; Apply or Cancel the move first")
        if operation == "shift":
            self.logic.shift_tumour(self.segmentation, value)
        elif operation == "scale":
            self.logic.scale_tumour(self.segmentation, value)
        elif operation == "remove":
            self.logic.remove_tumour(self.segmentation)
        elif operation == "undo":
            self.logic.undo_tumour_edit(self.segmentation)
        else:
            raise MedDDPMError(f"unknown edit '{operation}'")
        self.message, self.error = f"{operation} done", ""

    # --------------------------------------------------------------------------- move mode

    def begin_move(self) -> None:
        """Move mode: a copy of the tumour under a transform (SceneLogic.begin_move); drags and the scale
        slider set the transform (:meth:`set_move`), Apply makes it one edit, Cancel drops it."""
        if self.busy:
            raise MedDDPMError("a generation is running; wait for it or cancel it before moving the tumour")
        if self.segmentation is None:
            raise MedDDPMError("load a mask first")
        self.logic.begin_move(self.segmentation, show_handles=False)  # the page's drag replaces the handles
        self.move_translation, self.move_scale = [0.0, 0.0, 0.0], 1.0
        self.message, self.error = "move mode: drag the tumour in a slice view, scale it with the slider", ""

    @property
    def moving(self) -> bool:
        return self.segmentation is not None and self.logic.is_moving(self.segmentation)

    def set_move(self, translation_ras=None, scale=None) -> None:
        """The move so far: a translation (RAS mm) and a scale factor about the tumour's centre."""
        if translation_ras is not None:
            self.move_translation = [float(v) for v in translation_ras]
        if scale is not None:
            self.move_scale = float(scale)
        self.logic.set_move(self.segmentation, self.move_translation, self.move_scale)

    def preview_move(self) -> dict:
        """Where the tumour lands (clipped to the head), shown in the views; the engine's record."""
        try:
            record = self.logic.preview_move(self.segmentation)
        except MedDDPMError as error:
            self.message, self.error = "move preview", str(error)
            return {}
        clipped = record["clipped_voxels"]
        self.message, self.error = (f"preview: {record['voxels_after']} tumour voxels"
                                    + (f", {clipped} clipped at the head's edge" if clipped else "")), ""
        return record

    def apply_move(self) -> dict:
        record = self.logic.apply_move(self.segmentation)
        clipped = record["clipped_voxels"]
        self.message, self.error = (f"move applied: {record['voxels_after']} tumour voxels"
                                    + (f", {clipped} clipped at the head's edge" if clipped else "")), ""
        return record

    def cancel_move(self) -> None:
        if self.segmentation is not None:
            self.logic.cancel_move(self.segmentation)
        self.message, self.error = "move cancelled; the tumour is unchanged", ""

    # -------------------------------------------------------------------------------- export

    def export_zip(self) -> bytes:
        """The existing nnU-Net export (image + label + provenance) of the last result, zipped."""
        if not self.volumes:
            raise MedDDPMError("generate a result first")
        folder = Path(tempfile.mkdtemp(prefix="export_", dir=self.work_dir))
        try:
            self.logic.export_training_pair(self.volumes, self.segmentation, folder / "MedDDPMSynth",
                                            case_id="synth_001")
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        archive.write(path, path.relative_to(folder).as_posix())
            return buffer.getvalue()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        self.cancel()
        shutil.rmtree(self.work_dir, ignore_errors=True)
