"""One browser session: its own MRML scene, the Slicer module's SceneLogic, and a generation queue.

Every action is a SceneLogic call; this class only keeps per-session state (the segmentation, the last
volumes, the running job and the jobs waiting behind it) so one generation runs at a time per session.
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
from MedDDPMSynthSlicerLib.scene_io import array_from_node, ras_matrix_of, update_node_from_array

from . import render


def new_scene():
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)  # as in the application
    scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode", "Red")
    return scene


class WebSession:
    def __init__(self, work_dir: Path):
        self.work_dir = Path(tempfile.mkdtemp(prefix="session_", dir=work_dir))
        self.scene = new_scene()
        self.logic = SceneLogic(self.scene, temp_dir=self.work_dir)
        self.segmentation = None
        self.mask_name = ""
        self.volumes: list = []
        self.job = None
        self.job_kind = ""
        self.queue: list[tuple[str, GenerationSettings]] = []
        self.message = ""
        self.error = ""
        self._cut = None  # (grid shape, slice centre) of the picture last drawn: clicks map through it
        self.version = 0  # bumped when the pictures change, so the page reloads them

    # --------------------------------------------------------------------------------- input

    def load_mask(self, image: sitk.Image, name: str) -> None:
        """A label image as a segmentation node (one segment per label, named by the official labels)."""
        if self.busy:
            raise MedDDPMError("a generation is running; cancel it before loading another mask")
        labels = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkUInt8)) if image.GetPixelID() != sitk.sitkUInt8 \
            else sitk.GetArrayFromImage(image)
        if not labels.any():
            raise MedDDPMError("the mask is empty (all zero); upload a label mask with head and tumour labels")
        self.scene.Clear(0)
        self.scene = new_scene()
        self.logic = SceneLogic(self.scene, temp_dir=self.work_dir)
        labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} labels")
        update_node_from_array(labelmap, labels, ras_matrix_of(image))
        segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation, ""):
            raise MedDDPMError("the mask could not be turned into a segmentation")
        self.logic.name_segments_by_label(segmentation)
        self.segmentation, self.mask_name, self.volumes, self._cut = segmentation, name, [], None
        self.message, self.error = f"loaded {name}", ""
        self.version += 1

    # ---------------------------------------------------------------------------- generation

    @property
    def busy(self) -> bool:
        return self.job is not None

    def request(self, kind: str, settings: GenerationSettings) -> None:
        """Queue a generation ('generate') or local re-generation ('regenerate'); starts it if idle."""
        if self.segmentation is None:
            raise MedDDPMError("load a mask first")
        self.queue.append((kind, settings))
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
                self.error = str(error)

    def _finish(self) -> None:
        job, self.job = self.job, None
        try:
            nodes = self.logic.finish_generation(job)
        except MedDDPMError as error:
            self.error = str(error)
            return
        self.volumes = nodes
        self.logic.show_volumes(nodes, self.segmentation)
        self.message, self.error = f"{self.job_kind} finished: {nodes[0].GetName()}", ""
        self.version += 1

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
                "fraction": job.fraction() if job else 0.0, "eta": job.eta_seconds() if job else None,
                "queued": len(self.queue), "result": bool(self.volumes), "message": self.message,
                "error": self.error, "version": self.version,
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
        self._cut = None  # the slices follow the tumour after a move
        self.version += 1

    # ------------------------------------------------------------------------ pictures, export

    def picture(self) -> bytes:
        """Axial, coronal and sagittal slices through the tumour and a projection, as one PNG."""
        if self.segmentation is None:
            return render.blank_png()
        labels, _ = self.logic.label_array(self.segmentation)
        image = array_from_node(self.volumes[0]).astype(np.float32) if self.volumes else None
        if image is not None and image.shape != labels.shape:
            image = None  # the mask was replaced by one on another grid; show the mask alone
        if self._cut is None or self._cut[0] != labels.shape:  # keep the cut while painting: clicks stay put
            self._cut = (labels.shape, render.centre_of(labels))
        return render.montage(labels, image, self._cut[1])

    def paint(self, px: float, py: float, radius_mm: float) -> None:
        """A brush stroke on the picture last shown: a tumour ball at the clicked voxel (SceneLogic.add_tumor)."""
        if self.busy:
            raise MedDDPMError("a generation is running; wait for it or cancel it before editing")
        if self.segmentation is None or self._cut is None:
            raise MedDDPMError("load a mask first")
        voxel = render.voxel_at(self._cut[0], self._cut[1], px, py)
        if voxel is None:
            raise MedDDPMError("click inside the axial, coronal or sagittal slice to paint")
        _, ijk_to_ras = self.logic.label_array(self.segmentation)
        self.logic.add_tumor(self.segmentation, (ijk_to_ras @ np.r_[voxel, 1.0])[:3], radius_mm)
        self.message, self.error = "paint done", ""
        self.version += 1

    def export_zip(self) -> bytes:
        """The existing nnU-Net export (image + label + provenance) of the last result, zipped."""
        if not self.volumes:
            raise MedDDPMError("generate a result first")
        folder = Path(tempfile.mkdtemp(prefix="export_", dir=self.work_dir))
        try:
            self.logic.export_training_pair(self.volumes[:1], self.segmentation, folder / "MedDDPMSynth",
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
