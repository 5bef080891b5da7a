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

import numpy as np
import SimpleITK as sitk
import slicer

from MedDDPMSynthLib.errors import MedDDPMError
from MedDDPMSynthSlicerLib import GenerationSettings, SceneLogic
from MedDDPMSynthSlicerLib.scene_io import ras_matrix_of, update_node_from_array


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

    # --------------------------------------------------------------------------------- input

    def load_mask(self, image: sitk.Image, name: str) -> None:
        """A label image as a segmentation node (one segment per label, named by the official labels);
        the previous mask and results leave the scene only once the new mask has been read."""
        if self.busy:
            raise MedDDPMError("a generation is running; cancel it before loading another mask")
        labels = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkUInt8)) if image.GetPixelID() != sitk.sitkUInt8 \
            else sitk.GetArrayFromImage(image)
        if not labels.any():
            raise MedDDPMError("the mask is empty (all zero); upload a label mask with head and tumour labels")
        labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} labels")
        try:
            update_node_from_array(labelmap, labels, ras_matrix_of(image))
            segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation, ""):
                self.scene.RemoveNode(segmentation)
                raise MedDDPMError("the mask could not be turned into a segmentation")
        finally:
            self.scene.RemoveNode(labelmap)
        self.logic.name_segments_by_label(segmentation)
        try:  # labels the model does not know: refused here, the scene and the loaded mask as they were
            self.logic.segment_mapping(segmentation)
        except MedDDPMError as error:
            self.scene.RemoveNode(segmentation)
            raise MedDDPMError(f"the mask's labels do not fit the model: {error}") from None
        reference = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{name} (mask)")
        update_node_from_array(reference, labels.astype(np.float32), ras_matrix_of(image))
        reference.CreateDefaultDisplayNodes()
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
        labels, _ = self.logic.label_array(self.segmentation)
        return int((labels == 2).sum())

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
        if operation == "shift":
            self.logic.shift_tumor(self.segmentation, value)
        elif operation == "scale":
            self.logic.scale_tumor(self.segmentation, value)
        elif operation == "remove":
            self.logic.remove_tumor(self.segmentation)
        elif operation == "undo":
            self.logic.undo_tumor_edit(self.segmentation)
        else:
            raise MedDDPMError(f"unknown edit '{operation}'")
        self.message, self.error = f"{operation} done", ""

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
