"""The page: trame-slicer's viewer layout, slice/3-D views and segment editor, plus the Med-DDPM panel.

Widgets only; every callback is a controller method set by :mod:`.app`. State names start with
``synth_`` so they never collide with trame-slicer's own state.
"""

from __future__ import annotations

from trame.widgets import html
from trame.widgets import vuetify3 as v
from trame_server.utils.typed_state import TypedState
from trame_slicer.app.ui import (
    ControlButton,
    LayoutButton,
    LoadVolumeButton,
    LoadVolumeItemsState,
    SegmentEditorToolbarUI,
    SegmentEditorUI,
    SegmentEditorUndoRedoUI,
    ViewerLayout,
)
from undo_stack import Signal

from MedDDPMSynthLib.model.presets import PRESET_NAMES

from . import security

SYNTH_TOOL, EDITOR_TOOL = "SynthPanel", SegmentEditorUI.__name__
#: the engine's presets (same names as the command line's --sampler), then the samplers by name
SAMPLERS = (*PRESET_NAMES, "dpm++3m", "dpm++", "ddim", "ddpm")


def default_sampler() -> str:
    """The engine's per-device default preset: preview on a CPU, exact on a GPU."""
    from MedDDPMSynthSlicerLib.jobs import PRESETS, default_preset_label

    return PRESETS[default_preset_label()]


#: the panel's state and its values before anything is loaded
DEFAULTS = {
    "synth_mask": "", "synth_message": "upload a mask (.nii.gz, .nii, .nrrd, .mha) to begin", "synth_error": "",
    "synth_running": False, "synth_kind": "", "synth_fraction": 0.0, "synth_eta": "", "synth_queued": 0,
    "synth_result": False, "synth_can_regenerate": False, "synth_tumour_voxels": 0,
    "synth_models": [], "synth_model": "demo", "synth_sampler": default_sampler(), "synth_steps": 0, "synth_samples": 1,
    "synth_seed": 0, "synth_shift": [0.0, 0.0, 0.0], "synth_scale": 1.2,
    "synth_moving": False, "synth_move_scale": 1.0,
}


class MaskUploadButton(LoadVolumeButton):
    """trame-slicer's upload button, its received files checked as they arrive: one file, well-formed, at
    most ``max_bytes`` in all (else ``on_rejected`` with the reason and nothing kept), and the buffer
    emptied before ``on_load_volume`` runs, so a failing handler cannot leave files behind that make
    every later upload "more than one file"."""

    on_rejected = Signal(str)

    def __init__(self, *args, max_bytes: int = security.DEFAULT_UPLOAD_LIMIT, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_bytes, self.rejected = max_bytes, ""

    async def load_chunk(self, files) -> None:
        if files:  # a chunk of the upload
            if self.rejected:
                return  # the rest of a refused upload
            try:
                self.files.extend(security.upload_entries(files))
                if len(self.files) > 1:
                    raise security.UploadRejected("upload one mask file at a time")
                security.check_size(sum(e["size"] for e in self.files), self.max_bytes)
            except security.UploadRejected as error:
                self.files, self.rejected = [], str(error)
            return
        files, self.files = self.files, []  # the end of the upload
        rejected, self.rejected = self.rejected, ""
        if rejected:
            self.on_rejected.emit(rejected)
        elif files:
            await self.on_load_volume.async_emit(files)


class SynthUI:
    """Builds the page on ``server``; ``ctrl`` callbacks: synth_generate, synth_regenerate, synth_cancel,
    synth_shift, synth_scale, synth_remove, synth_undo, synth_move_begin, synth_move_apply, synth_move_cancel.
    ``upload.on_load_volume`` emits the uploaded files."""

    def __init__(self, server, layout_manager, title: str, upload_limit: int = security.DEFAULT_UPLOAD_LIMIT):
        self.server = server
        server.state.update(DEFAULTS)
        ctrl = server.controller
        with ViewerLayout(server, is_drawer_visible=True) as self.layout:
            self.viewer = self.layout.typed_state
            self.viewer.data.active_tool = SYNTH_TOOL
            self.layout.title.set_text(title)
            self.layout.state.trame__title = title
            with self.layout.appbar, v.Template(v_slot_prepend=True):
                upload_state = TypedState(server.state, LoadVolumeItemsState, namespace="synth_upload")
                self.upload = MaskUploadButton(name="Upload a mask", load_directory=False, icon="mdi-file-upload",
                                               typed_state=upload_state, classes="synth-upload",
                                               max_bytes=upload_limit)
            with self.layout.drawer:
                with html.Div(v_if=(f"{self.viewer.name.active_tool} === '{SYNTH_TOOL}'",), classes="pa-3"):
                    self._synth_panel(ctrl)
                self.editor = SegmentEditorUI(v_if=(f"{self.viewer.name.active_tool} === '{EDITOR_TOOL}'",))
            with self.layout.toolbar:
                self._tool_button("mdi-creation", "Med-DDPM generation", SYNTH_TOOL)
                self._tool_button("mdi-layers-edit", "Segment editor (paint / erase the tumour)", EDITOR_TOOL)
                self.layout_button = LayoutButton(classes="mt-1")
                SegmentEditorToolbarUI(editor_ui=self.editor)
            with self.layout.undo_redo:
                SegmentEditorUndoRedoUI(editor_ui=self.editor, v_if=(f"{self.viewer.name.active_tool} === "
                                                                     f"'{EDITOR_TOOL}'",))
            with self.layout.content:
                layout_manager.initialize_layout_grid(self.layout)

    def _tool_button(self, icon: str, name: str, tool: str):
        viewer = self.viewer

        def toggle():
            visible = not viewer.data.is_drawer_visible or viewer.data.active_tool != tool
            viewer.data.is_drawer_visible, viewer.data.active_tool = visible, tool if visible else None

        ControlButton(icon=icon, name=name, click=toggle, classes="mt-1",
                      active=(f"{viewer.name.active_tool} === '{tool}'",),
                      disabled=(f"!{viewer.name.is_volume_loaded}",) if tool == EDITOR_TOOL else False)

    @staticmethod
    def _move_panel(ctrl, idle: str) -> None:
        """Move mode: drag the tumour in a slice view (in that view's plane), scale it with the slider; the
        filled tumour shows where it lands, clipped to the head; Apply is one edit (Undo edit undoes it)."""
        with v.VRow(dense=True, classes="mt-1"):
            with v.VCol(cols=12, v_if=("!synth_moving",)):
                v.VBtn("Move tumour (drag in a slice view)", click=ctrl.synth_move_begin, block=True,
                       prepend_icon="mdi-cursor-move", disabled=(idle,), classes="synth-move")
            with v.VCol(cols=12, v_if=("synth_moving",)):
                v.VSlider(label="Scale", v_model_number=("synth_move_scale",), min=0.5, max=2.0, step=0.05,
                          thumb_label=True, density="compact", hide_details=True, classes="synth-move-scale")
            with v.VCol(cols=6, v_if=("synth_moving",)):
                v.VBtn("Apply move", click=ctrl.synth_move_apply, color="primary", block=True,
                       classes="synth-move-apply")
            with v.VCol(cols=6, v_if=("synth_moving",)):
                v.VBtn("Cancel move", click=ctrl.synth_move_cancel, block=True, classes="synth-move-cancel")

    @staticmethod
    def _synth_panel(ctrl) -> None:
        idle = "synth_running || !synth_mask"
        html.Div("Med-DDPM synthesis", classes="text-h6 mb-2")
        html.Div("{{ synth_mask ? 'Mask: ' + synth_mask + ' (' + synth_tumour_voxels + ' tumour voxels)' : "
                 "'No mask loaded' }}", classes="text-body-2 mb-2 synth-mask")
        v.VSelect(label="Model", v_model=("synth_model",), items=("synth_models",), density="compact",
                  hide_details=True, classes="mb-2")
        with v.VRow(dense=True):
            with v.VCol(cols=6):
                v.VSelect(label="Sampler", v_model=("synth_sampler",), items=("synth_samplers", list(SAMPLERS)),
                          density="compact", hide_details=True, classes="synth-sampler")
            with v.VCol(cols=6):
                v.VTextField(label="Steps (0: the preset's)", v_model_number=("synth_steps",), type="number",
                             density="compact", hide_details=True, classes="synth-steps")
            with v.VCol(cols=6):
                v.VTextField(label="Samples", v_model_number=("synth_samples",), type="number", min=1, max=8,
                             density="compact", hide_details=True)
            with v.VCol(cols=6):
                v.VTextField(label="Seed", v_model_number=("synth_seed",), type="number", density="compact",
                             hide_details=True)
        with v.VRow(dense=True, classes="mt-2"):
            with v.VCol(cols=6):
                v.VBtn("Generate", click=ctrl.synth_generate, color="primary", block=True,
                       disabled=("!synth_mask",), classes="synth-generate")
            with v.VCol(cols=6):
                v.VBtn("Cancel", click=ctrl.synth_cancel, block=True, disabled=("!synth_running",),
                       classes="synth-cancel")
        v.VProgressLinear(model_value=("synth_fraction * 100",), height=18, color="green", classes="mt-3 synth-progress",
                          striped=("synth_running",))
        html.Div("{{ synth_running ? synth_kind + ' ' + Math.round(synth_fraction * 100) + '%' + "
                 "(synth_eta ? ', ' + synth_eta + ' left' : '') : '' }}"
                 "{{ synth_queued ? ' (' + synth_queued + ' queued)' : '' }}", classes="text-caption synth-status")
        html.Div("{{ synth_message }}", classes="text-body-2 mt-1 synth-message")
        v.VAlert(text=("synth_error",), v_if=("synth_error",), type="error", density="compact", classes="mt-2 synth-error")

        v.VDivider(classes="my-3")
        html.Div("Tumour (then re-generate only around it)", classes="text-subtitle-2 mb-1")
        with v.VRow(dense=True):
            for axis, label in enumerate(("R mm", "A mm", "S mm")):
                with v.VCol(cols=4):
                    v.VTextField(label=label, v_model_number=(f"synth_shift[{axis}]",), type="number",
                                 density="compact", hide_details=True, classes=f"synth-shift-{axis}")
        with v.VRow(dense=True):
            with v.VCol(cols=6):
                v.VBtn("Shift", click=ctrl.synth_shift, block=True, disabled=(idle,), classes="synth-shift")
            with v.VCol(cols=6):
                v.VTextField(label="Scale factor", v_model_number=("synth_scale",), type="number", step=0.1,
                             density="compact", hide_details=True)
            with v.VCol(cols=6):
                v.VBtn("Scale", click=ctrl.synth_scale, block=True, disabled=(idle,))
            with v.VCol(cols=6):
                v.VBtn("Remove", click=ctrl.synth_remove, block=True, disabled=(idle,))
            with v.VCol(cols=6):
                v.VBtn("Undo edit", click=ctrl.synth_undo, block=True, disabled=(idle,))
            with v.VCol(cols=6):
                v.VBtn("Regenerate locally", click=ctrl.synth_regenerate, block=True,
                       disabled=("synth_running || !synth_can_regenerate",), classes="synth-regenerate")
        SynthUI._move_panel(ctrl, idle)

        v.VDivider(classes="my-3")
        v.VBtn("Download image + mask (zip)", href="download", target="_blank", block=True, prepend_icon="mdi-download",
               disabled=("!synth_result || synth_running",), classes="synth-download",
               raw_attrs=['download="medddpm_synth_pair.zip"'])
