"""Scene logic of the Slicer module: MRML nodes in, MRML nodes out, no widgets.

Every method works on the scene given to :class:`SceneLogic` and is usable from Slicer's Python console
(``logic = slicer.util.getModuleLogic("MedDDPMSynth")``). The algorithms are the engine's: generation
runs the engine's command line in a background process, tumour edits call :mod:`MedDDPMSynthLib.domain.tumour_edit`.
On an error or a cancel the scene is left as it was.

Coordinates given here are Slicer's RAS (mm); the engine works in LPS and the conversion is done once,
in :mod:`.scene_io` and :func:`MedDDPMSynthLib.domain.geometry.ras_to_lps`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedDDPMSynthLib.store import models
from MedDDPMSynthLib.domain import tumour_edit
from MedDDPMSynthLib.model.checkpoint import load_checkpoint
from MedDDPMSynthLib.errors import InputError, MedDDPMError
from MedDDPMSynthLib.domain.geometry import ras_to_lps
from MedDDPMSynthLib.domain.families import FAMILIES, WHOLE_HEAD, Family, family_for_channels, family_named
from MedDDPMSynthLib.workflows.pipeline import sample_files

from . import attributes
from . import export as export_module
from . import process, segments
from .jobs import GenerationJob, GenerationSettings, default_preset_label, new_folder, write_image
from .move import MoveMixin
from .scene_io import (
    image_from_node,
    ras_matrix_of,
    same_grid,
    same_matrix_grid,
    scene_guard,
    update_node_from_array,
)

ATTRIBUTE = attributes.PREFIX  # node attribute names: see attributes.py
#: tumour edits kept for undo per segmentation; each holds a full-grid uint8 copy of every mapped segment
UNDO_DEPTH = 10
MASK_STEM = "mask"  # the label map handed to the engine: its outputs are named after it (pipeline.sample_files)


class SceneLogic(MoveMixin):
    """Segmentation -> labels -> synthetic volumes; tumour edits with undo; local re-generation; export."""

    def __init__(self, scene, temp_dir: str | Path | None = None, python: str | None = None):
        self.scene = scene
        self.temp_dir = temp_dir
        self.python = python  # the interpreter running the engine (default: PythonSlicer / this Python)
        # Undo and Regenerate state, keyed by node ID *and* holding the node: a closed scene restarts its IDs
        # (vtkMRMLScene::Clear), so an ID alone could name another scene's node. State whose node is no longer
        # the scene's node of that ID (scene closed, node removed) is dropped before every use. No scene
        # observer: a VTK callback into this object while the scene is being destroyed can crash the process.
        self._undo: dict[str, tuple[object, list[dict]]] = {}
        self._last: dict[str, dict] = {}
        self._families: dict[str, Family] = {}
        #: the family each segmentation is painted for (set by the model it is loaded or generated with)
        self._segmentation_families: dict[str, tuple[object, Family]] = {}
        self._generation = 0

    def _forget_stale(self) -> None:
        """Drop the Undo/Regenerate state of segmentations (and results) that are gone from the scene."""
        for key in [k for k, (node, _) in self._undo.items() if not self._current(k, node)]:
            del self._undo[key]
        for key in [k for k, last in self._last.items() if not self._current(k, last["segmentation"])
                    or not all(self._current(i, n) for i, n in zip(last["nodes"], last["node_objects"]))]:
            del self._last[key]

    def _current(self, node_id: str, node) -> bool:
        return self.scene.GetNodeByID(node_id) is node

    # ------------------------------------------------------------------------------------ models

    def available_models(self) -> list[dict]:
        """Catalogue entries (the demo model first) that can be used now."""
        return [m for m in models.list_models() if m.get("available", True)]

    def import_model(self, path: str, name: str | None = None, overwrite: bool = False,
                     grid_xyz=None, spacing_mm=None) -> dict:
        """Validate and copy a checkpoint into the model catalogue (the engine's model manager)."""
        return models.import_model(path, name=name, grid_xyz=grid_xyz, spacing_mm=spacing_mm, overwrite=overwrite)

    def model_family(self, model: str) -> Family:
        if model not in self._families:
            path = Path(model).expanduser()
            if path.is_file():
                config = load_checkpoint(path)[0].config
                self._families[model] = family_for_channels(config.in_channels, config.out_channels)
            else:
                self._families[model] = segments.family_of(models.info(model)["family"])
        return self._families[model]

    def model_timesteps(self, model: str) -> int | None:
        return self._catalogue_entry(model).get("timesteps")

    def model_preview(self, model: str) -> str | None:
        """The preview sampler ``model`` recommends (a spec such as ``ddim:25:uniform:bf16:1``), or None."""
        return self._catalogue_entry(model).get("preview")

    @staticmethod
    def _catalogue_entry(model: str) -> dict:
        return models.info(model) if not Path(model).expanduser().is_file() else {}

    def _preset(self, preset: str, model: str, **choices) -> GenerationSettings:
        """A named preset for ``model``, resolved with its T and its own preview (one catalogue read)."""
        entry = self._catalogue_entry(model)
        return GenerationSettings.preset(preset, entry.get("timesteps"), entry.get("preview"), model=model, **choices)

    def settings_for(self, model: str, preset: str = "Preview", **choices) -> GenerationSettings:
        """The generation settings of every front for ``model``: a named preset (``Preview``, ``Exact``: the
        engine's, resolved for the model's T) or ``Custom`` with the user's ``sampler`` and ``steps``;
        ``choices`` also carry samples, seed, device, margin_mm, harmonize. With a preset, a ``steps`` value
        overrides the preview's steps (Exact takes all T steps, the sampler is the preset's); custom steps
        are the user's (more than T is refused by the engine with one message). The ddpm sampler always
        takes all T steps, DDIM skips uniformly, the other samplers quadratically."""
        sampler = choices.pop("sampler", None)
        steps = choices.pop("steps", None)
        if preset != "Custom":
            if steps and preset != "Exact":
                choices["steps"] = int(steps)
            return self._preset(preset, model, **choices)
        sampler = sampler or "dpm++"
        steps = None if sampler == "ddpm" or not steps else int(steps)
        return GenerationSettings(model=model, sampler=sampler, steps=steps,
                                  spacing="uniform" if sampler == "ddim" else "quadratic", **choices)

    # ------------------------------------------------------------------------ segmentation families

    def set_family(self, segmentation_node, family_or_model) -> Family:
        """Say which model family a segmentation is painted for (a family, its name, or a model name / file):
        every later call on it uses that family unless given another, so no front passes it by hand."""
        family = family_or_model if isinstance(family_or_model, Family) else (
            FAMILIES[family_or_model] if family_or_model in FAMILIES else self.model_family(family_or_model))
        self._segmentation_families[segmentation_node.GetID()] = (segmentation_node, family)
        return family

    def family_of_segmentation(self, segmentation_node, family: Family | str | None = None) -> Family:
        """``family`` when given, else the one set for the segmentation (:meth:`set_family`), else whole-head."""
        if family is not None:
            return family_named(family)
        entry = self._segmentation_families.get(segmentation_node.GetID()) if segmentation_node is not None else None
        return entry[1] if entry and entry[0] is segmentation_node else WHOLE_HEAD

    def load_label_image(self, image: sitk.Image, name: str, family_or_model=None):
        """A label image (official labels of the family) as a new segmentation, one segment per label named
        after its tissue, plus a grey reference volume of the labels (its grid for the views and the
        segment editor). Labels the family does not know are refused and nothing stays in the scene.
        Returns (segmentation node, reference volume node)."""
        labels = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkUInt8) if image.GetPixelID() != sitk.sitkUInt8
                                        else image)
        if not labels.any():
            raise InputError("the mask is empty (all zero); upload a label mask with head/brain and tumour labels")
        matrix = ras_matrix_of(image)
        with scene_guard(self.scene, []) as kept:
            labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} labels")
            update_node_from_array(labelmap, labels, matrix)
            segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
            if not segments.import_labelmap(labelmap, segmentation):
                raise MedDDPMError("the mask could not be turned into a segmentation")
            self.scene.RemoveNode(labelmap)
            if family_or_model is not None:
                self.set_family(segmentation, family_or_model)
            self.name_segments_by_label(segmentation)
            try:  # labels the model does not know: refused here, the scene as it was
                self.segment_mapping(segmentation)
            except MedDDPMError as error:
                raise MedDDPMError(f"the mask's labels do not fit the model: {error}") from None
            reference = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{name} (mask)")
            update_node_from_array(reference, labels.astype(np.float32), matrix)
            reference.CreateDefaultDisplayNodes()
            kept.extend([segmentation, reference])
        return segmentation, reference

    def tumour_voxels(self, segmentation_node, reference_volume=None, mapping=None, family=None) -> int:
        """How many voxels are tumour now (any tumour label of the segmentation's family)."""
        labels, _ = self.label_array(segmentation_node, reference_volume, mapping, family)
        family = self.family_of_segmentation(segmentation_node, family)
        return int(np.isin(labels, family.tumour_labels).sum())

    # ------------------------------------------------------------------------- segmentation -> labels

    def segment_mapping(self, segmentation_node, family: Family | str | None = None, choice: dict | None = None):
        """Which segments are which tissue: from ``choice`` ({tissue: segment ID or name}) or the names.
        ``family`` None: the segmentation's family (:meth:`family_of_segmentation`)."""
        if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
            raise InputError("no segmentation selected; choose the segmentation with the head and the tumour")
        family = self.family_of_segmentation(segmentation_node, family)
        if choice:
            return segments.explicit_mapping(segmentation_node, family, choice)
        return segments.auto_mapping(segmentation_node, family)

    def name_segments_by_label(self, segmentation_node, family: Family | str | None = None) -> int:
        """Name segments that carry no tissue name after the official label value they were imported from
        (a label file loaded as segmentation gives "Label_1", "Segment_2", ...); returns how many."""
        family = self.family_of_segmentation(segmentation_node, family)
        names = dict(zip(family.condition_labels, family.condition_names))
        seg = segmentation_node.GetSegmentation()
        renamed = 0
        for n in range(seg.GetNumberOfSegments()):
            segment = seg.GetNthSegment(n)
            number = re.search(r"(\d+)$", segment.GetName())  # "Segment_1", "Label_2", "1"
            tissue = names.get(segment.GetLabelValue()) or (names.get(int(number.group(1))) if number else None)
            if tissue and segments.tissue_for_name(segment.GetName(), family) is None:
                segment.SetName(segments.DISPLAY[tissue])
                renamed += 1
        return renamed

    def label_map(self, segmentation_node, reference_volume=None, mapping=None, family=None):
        """:class:`segments.LabelExport`: official label image on the reference grid, with its IJK->RAS."""
        mapping = mapping if isinstance(mapping, segments.SegmentMapping) else \
            self.segment_mapping(segmentation_node, family, mapping)
        return segments.export_labels(self.scene, segmentation_node, mapping, reference_volume)

    def label_array(self, segmentation_node, reference_volume=None, mapping=None, family=None):
        """(labels (K, J, I) uint8 in official values, 4x4 IJK->RAS) of the segmentation."""
        export = self.label_map(segmentation_node, reference_volume, mapping, family)
        return sitk.GetArrayFromImage(export.image), export.ijk_to_ras

    # ------------------------------------------------------------------------------- generation

    def start_generation(self, segmentation_node, settings: GenerationSettings | None = None,
                         reference_volume=None, mapping=None) -> GenerationJob:
        """Check the input, then start the engine in the background; poll the returned job."""
        if settings is None:  # the engine's per-device default: Preview on a CPU, Exact on a GPU
            settings = self._preset(default_preset_label(), GenerationSettings.model)
        family = self.set_family(segmentation_node, settings.model)
        export = self.label_map(segmentation_node, reference_volume, mapping, family)
        folder = new_folder(self.temp_dir)
        job = GenerationJob("generate", segmentation_node.GetID(), export, settings, folder)
        mask = write_image(export.image, folder / f"{MASK_STEM}.nii.gz")
        args = ["generate", "--mask", str(mask), "-o", str(folder / "out"), "--labels",
                export.mapping.labels_option(), "--intensity", "unit", "--progress-lines", *settings.arguments()]
        return self._launch(job, args)

    def _launch(self, job: GenerationJob, args: list[str]) -> GenerationJob:
        try:
            job.engine = process.EngineProcess(args, self.python)
        except OSError as error:
            job.cleanup()
            raise MedDDPMError(f"cannot start the engine ({error}); check the module's Python dependencies") from None
        return job

    def finish_generation(self, job: GenerationJob) -> list:
        """The job's result as volume nodes (new ones, or the updated ones for a re-generation)."""
        try:
            job.check_success()
            family = job.export.mapping.family
            files = sample_files(job.folder / "out", MASK_STEM, ".nii.gz", job.settings.samples, family.modalities)
            provenance = json.loads((job.folder / "out" / "provenance.json").read_text())
            if job.kind == "regenerate":
                nodes = self._update_nodes(job, files[0], provenance)
            else:
                nodes = self._add_nodes(job, files, provenance)
        finally:
            job.cleanup()
        self._last[job.segmentation_id] = {"export": job.export, "nodes": [n.GetID() for n in nodes],
                                           "node_objects": list(nodes), "settings": job.settings,
                                           "segmentation": self.scene.GetNodeByID(job.segmentation_id)}
        return nodes

    def cancel_generation(self, job: GenerationJob) -> None:
        """Stop the engine process tree now; no node or file of the job remains."""
        job.cancel()

    def generate(self, segmentation_node, settings: GenerationSettings | None = None, reference_volume=None,
                 mapping=None, progress=None, show: bool = True) -> list:
        """Blocking form of start + finish (for scripts): the new volume nodes."""
        job = self.start_generation(segmentation_node, settings, reference_volume, mapping)
        _wait_or_cancel(job, progress)
        nodes = self.finish_generation(job)
        if show:
            self.show_volumes(nodes)
        return nodes

    def _read_output(self, job: GenerationJob, path: Path) -> np.ndarray:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        if not same_grid(image, job.export.ijk_to_ras, job.export.dimensions):
            raise MedDDPMError(f"the engine wrote {path.name} on another grid than the mask's; please report this")
        return sitk.GetArrayFromImage(image)

    def _add_nodes(self, job: GenerationJob, files: list[list[Path]], provenance: dict) -> list:
        family = job.export.mapping.family
        self._generation += 1
        segmentation = self.scene.GetNodeByID(job.segmentation_id)
        base = segmentation.GetName() if segmentation is not None else "MedDDPM"
        nodes: list = []
        kept: list = []  # filled only once every volume is complete: on an error the guard removes them all
        with scene_guard(self.scene, kept):
            for n, row in enumerate(files):
                seed = job.settings.seed + n
                for modality, path in zip(family.modalities, row):
                    node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                                        self.scene.GenerateUniqueName(f"{base} {modality.upper()} seed {seed}"))
                    nodes.append(node)
                    update_node_from_array(node, self._read_output(job, path), job.export.ijk_to_ras)
                    self._describe(node, job, modality, seed, provenance)
            kept.extend(nodes)
        return nodes

    def _update_nodes(self, job: GenerationJob, row: list[Path], provenance: dict) -> list:
        arrays = [self._read_output(job, path) for path in row]  # all read before any node changes
        nodes = [self.scene.GetNodeByID(i) for i in job.target_ids]
        for node, array, modality in zip(nodes, arrays, job.export.mapping.family.modalities):
            update_node_from_array(node, array, job.export.ijk_to_ras)
            self._describe(node, job, modality, job.settings.seed, provenance)
        return nodes

    def _describe(self, node, job, modality, seed, provenance) -> None:
        node.SetAttribute(attributes.MODEL, job.settings.model)
        node.SetAttribute(attributes.MODALITY, modality)
        node.SetAttribute(attributes.SEED, str(seed))
        node.SetAttribute(attributes.SEGMENTATION, job.segmentation_id)
        node.SetAttribute(attributes.PROVENANCE, json.dumps(provenance))
        # the label voxels it was generated from: Export refuses to pair it with an edited segmentation
        node.SetAttribute(attributes.MASK_SHA256, export_module.label_sha256(job.export.image))
        if job.kind != "regenerate":  # one generation = one set of samples; Export makes a case per sample
            node.SetAttribute(attributes.GENERATION, f"{id(self):x}-{self._generation}")
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
            display.AutoWindowLevelOff()
            display.SetWindowLevel(1.0, 0.5)  # --intensity unit: [0, 1]

    def show_volumes(self, nodes, segmentation_node=None) -> None:
        """Show the first volume as background in every slice view, the segmentation on top of it (tumour
        filled, the other segments as outlines)."""
        if not nodes:
            return
        for n in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            composite = self.scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
            composite.SetBackgroundVolumeID(nodes[0].GetID())
        display = segmentation_node.GetDisplayNode() if segmentation_node is not None else None
        if display is not None:
            display.SetVisibility(True)
            try:
                tumour = set(self.segment_mapping(segmentation_node, self._family_of_volumes(nodes)).tumour_segments())
            except MedDDPMError:
                return
            for n in range(segmentation_node.GetSegmentation().GetNumberOfSegments()):
                segment_id = segmentation_node.GetSegmentation().GetNthSegmentID(n)
                if segment_id not in tumour:  # the head/brain as an outline: its fill would hide the image
                    display.SetSegmentOpacity2DFill(segment_id, 0.0)

    # ------------------------------------------------------------------------------- tumour edits

    def _edit(self, segmentation_node, reference_volume, mapping, family, operation, *args) -> dict:
        family = self.family_of_segmentation(segmentation_node, family)
        export = self.label_map(segmentation_node, reference_volume, mapping, family)
        if not export.mapping.tumour_segments():
            raise InputError(f"segmentation '{segmentation_node.GetName()}' has no tumour segment to edit; add a "
                             "segment named 'tumour' (or map one) first")
        edited, record = operation(export.image, family.name, *args)
        saved = segments.snapshot(self.scene, segmentation_node, export.mapping, reference_volume)
        before = set(segments.segment_ids(segmentation_node))
        segments.import_labels(self.scene, segmentation_node, export, sitk.GetArrayFromImage(edited))
        added = [i for i in segments.segment_ids(segmentation_node) if i not in before]  # absent BraTS layers
        key = segmentation_node.GetID()
        self._forget_stale()
        stack = self._undo.setdefault(key, (segmentation_node, []))[1]
        stack.append({"saved": saved, "added": added, "record": record})
        del stack[:-UNDO_DEPTH]  # bounded: the oldest edits can no longer be undone
        return record

    def shift_tumour(self, segmentation_node, vector_ras_mm, reference_volume=None, mapping=None,
                    family=None, component=None) -> dict:
        """Move the tumour segment(s) by a RAS vector in mm (kept inside the head/brain); the edit record."""
        return self._edit(segmentation_node, reference_volume, mapping, family,
                          lambda m, f: tumour_edit.shift(m, f, ras_to_lps(vector_ras_mm), component))

    def scale_tumour(self, segmentation_node, factor, reference_volume=None, mapping=None,
                    family=None, component=None) -> dict:
        """Scale the tumour about its centroid (one factor, or three along R, A, S)."""
        return self._edit(segmentation_node, reference_volume, mapping, family,
                          lambda m, f: tumour_edit.scale(m, f, factor, component))

    def rotate_tumour(self, segmentation_node, angles_ras_deg, reference_volume=None, mapping=None,
                     family=None, component=None) -> dict:
        """Rotate the tumour about its centroid: degrees about the R, then A, then S axis."""
        # diag(-1,-1,1) Rz Ry Rx diag(-1,-1,1): the angles about L and P are those about R and A negated
        return self._edit(segmentation_node, reference_volume, mapping, family,
                          lambda m, f: tumour_edit.rotate(m, f, ras_to_lps(angles_ras_deg), component))

    def remove_tumour(self, segmentation_node, reference_volume=None, mapping=None, family=None,
                     component=None) -> dict:
        """Erase the tumour (it becomes head/brain)."""
        return self._edit(segmentation_node, reference_volume, mapping, family,
                          lambda m, f: tumour_edit.remove(m, f, component))

    def add_tumour(self, segmentation_node, center_ras_mm, radius_mm: float, reference_volume=None, mapping=None,
                  family=None) -> dict:
        """Add a ball of tumour at a RAS point (clipped to the head/brain): a paint-brush stroke."""
        return self._edit(segmentation_node, reference_volume, mapping, family,
                          lambda m, f: tumour_edit.add(m, f, ras_to_lps(center_ras_mm), radius_mm))

    def _undo_stack(self, segmentation_node) -> list:
        self._forget_stale()
        entry = self._undo.get(segmentation_node.GetID()) if segmentation_node is not None else None
        return entry[1] if entry and entry[0] is segmentation_node else []

    def can_undo(self, segmentation_node) -> bool:
        return bool(self._undo_stack(segmentation_node))

    def edit_history(self, segmentation_node) -> list[dict]:
        """The records of the tumour edits that can still be undone, oldest first."""
        return [entry["record"] for entry in self._undo_stack(segmentation_node)]

    def undo_tumour_edit(self, segmentation_node) -> bool:
        """Put the segments back as they were before the last tumour edit; False if there is none."""
        stack = self._undo_stack(segmentation_node)
        if not stack:
            return False
        entry = stack.pop()
        segments.restore(self.scene, segmentation_node, entry["saved"])
        for segment_id in entry["added"]:  # the empty layers the edit had to add
            segmentation_node.GetSegmentation().RemoveSegment(segment_id)
        return True

    # ------------------------------------------------------------------------ local re-generation

    def can_regenerate(self, segmentation_node) -> bool:
        self._forget_stale()
        last = self._last.get(segmentation_node.GetID()) if segmentation_node is not None else None
        return bool(last and last["segmentation"] is segmentation_node
                    and all(self._current(i, n) for i, n in zip(last["nodes"], last["node_objects"])))

    def start_regeneration(self, segmentation_node, settings: GenerationSettings | None = None,
                           reference_volume=None, mapping=None) -> GenerationJob:
        """Regenerate the last result of this segmentation only around the (edited) tumour; the volume
        nodes are updated in place when the job is finished, everything else stays bit for bit."""
        if not self.can_regenerate(segmentation_node):
            raise InputError("there is no earlier result of this segmentation in the scene; click Generate first")
        last = self._last[segmentation_node.GetID()]
        # the same sampler as Generate: the engine in-paints on the official sampler or on a fast one's steps
        settings = GenerationSettings(**{**(settings or last["settings"]).to_dict(), "samples": 1})
        family = last["export"].mapping.family
        export = self.label_map(segmentation_node, reference_volume, mapping or last["export"].mapping, family)
        if not same_matrix_grid(export.ijk_to_ras, export.dimensions, last["export"].ijk_to_ras,
                                last["export"].dimensions):
            raise InputError("the segmentation's geometry changed since the last result; generate again instead")
        folder = new_folder(self.temp_dir)
        job = GenerationJob("regenerate", segmentation_node.GetID(), export, settings, folder,
                            target_ids=list(last["nodes"][:len(family.modalities)]))
        previous_mask = write_image(last["export"].image, folder / "previous_mask.nii.gz")
        keep = [write_image(image_from_node(self.scene.GetNodeByID(i)), folder / f"previous_{m}.nii.gz")
                for i, m in zip(job.target_ids, family.modalities)]
        mask = write_image(export.image, folder / f"{MASK_STEM}.nii.gz")
        args = ["generate", "--mask", str(mask), "-o", str(folder / "out"), "--labels", export.mapping.labels_option(),
                "--intensity", "unit", "--progress-lines", "--keep", str(keep[0]), "--previous-mask", str(previous_mask),
                "--margin", str(settings.margin_mm), "--harmonize", str(settings.harmonize), *settings.arguments()]
        return self._launch(job, args)

    def regenerate(self, segmentation_node, settings=None, reference_volume=None, mapping=None, progress=None):
        """Blocking form of :meth:`start_regeneration`; the updated volume nodes."""
        job = self.start_regeneration(segmentation_node, settings, reference_volume, mapping)
        _wait_or_cancel(job, progress)
        return self.finish_generation(job)

    # ------------------------------------------------------------------------------------ export

    def export_training_pair(self, volume_nodes, segmentation_node, folder, case_id: str | None = None,
                             mapping=None, family=None, overwrite: bool = False) -> list[Path]:
        """Write the volumes + segmentation as an nnU-Net image/label pair with provenance JSON."""
        if not volume_nodes:
            raise InputError("no volume selected to export; choose the synthetic volume(s) first")
        family = segments.family_of(family or self._family_of_volumes(volume_nodes))
        cases = export_module.group_cases(volume_nodes, family)  # one case per sample, channels in order
        export = self.label_map(segmentation_node, volume_nodes[0], mapping, family)
        return export_module.write_cases(cases, export, Path(folder), case_id, overwrite)

    def family_of_volumes(self, volume_nodes) -> Family:
        """The family of generated volumes (the model they carry), whole-head for other volumes."""
        return self._family_of_volumes(volume_nodes)

    def _family_of_volumes(self, volume_nodes) -> Family:
        model = volume_nodes[0].GetAttribute(attributes.MODEL)
        return self.model_family(model) if model else WHOLE_HEAD


# the earlier spelling of the edit methods, kept for scripts written against it (identifiers now say tumour)
for _name in ("shift", "scale", "rotate", "remove", "add"):
    setattr(SceneLogic, f"{_name}_tumor", getattr(SceneLogic, f"{_name}_tumour"))
SceneLogic.undo_tumor_edit = SceneLogic.undo_tumour_edit
del _name


def _wait_or_cancel(job, progress) -> None:
    """Wait for a background job; any interruption (error, Ctrl-C) kills it so nothing is left running."""
    try:
        job.wait(progress=progress)
    except BaseException:
        job.cancel()
        raise
