"""Segmentation node <-> official label map of a model family, through Slicer's segmentation logic.

Which segment is which tissue (a :class:`SegmentMapping`) comes from the segment names ("head",
"Tumour", "necrotic", ...) or from an explicit choice. The label map is made by
``vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode`` in the reference geometry (a chosen
volume, else the segmentation's own reference geometry), tissue first and the innermost tumour layer
last, so where segments overlap the tumour wins. Edited maps go back with
``ImportLabelmapToSegmentationNode`` into the same segments. Temporary nodes never stay in the scene.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import vtk

from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.families import Family, family_named
from MedDDPMSynthLib.domain.labels import ALIASES, LabelMapping, to_official

from .scene_io import array_from_node, ijk_to_ras, itk_geometry, scene_guard, update_node_from_array

#: extra segment names Slicer users give (on top of the engine's aliases)
EXTRA_NAMES = {
    "whole_head": {"head": ("brain", "wholehead", "skin")},
    "brats": {"brain": ("head",), "necrotic": ("net", "necroticcore"), "enhancing": ("enhancingtumor",
              "enhancingtumour"), "edema": ("peritumoraledema", "peritumouraloedema")},
}
DISPLAY = {"head": "head", "tumor": "tumour", "brain": "brain", "edema": "oedema", "enhancing": "enhancing",
           "necrotic": "necrotic"}


family_of = family_named  # the engine's lookup (a Family passes through)


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def tissue_for_name(segment_name: str, family: Family) -> str | None:
    """The tissue a segment name stands for in this family ("Tumour 1" -> tumor), else None."""
    key = _normalise(segment_name)
    for tissue in family.paint_order:
        names = ALIASES.get(tissue, (tissue,)) + EXTRA_NAMES[family.name].get(tissue, ())
        if key in {_normalise(n) for n in names}:
            return tissue
    return None


@dataclass
class SegmentMapping:
    """Segment IDs of each tissue of a family (official tissue names: head, tumor, brain, edema, ...)."""

    family: Family
    segments: dict[str, list[str]] = field(default_factory=dict)

    def ordered(self) -> list[tuple[str, str]]:
        """(tissue, segment ID) in painting order."""
        return [(t, s) for t in self.family.paint_order for s in self.segments.get(t, [])]

    def tumour_segments(self) -> list[str]:
        return [s for t, s in self.ordered() if t != self.family.tissue_name]

    def labels_option(self) -> str:
        """The engine's ``--labels`` text for a map written in official values."""
        return ",".join(f"{n}={v}" for n, v in zip(self.family.condition_names, self.family.condition_labels))


def import_labelmap(labelmap_node, segmentation_node) -> bool:
    """Slicer's import of a label map volume into a segmentation (one segment per label value)."""
    from slicer import vtkSlicerSegmentationsModuleLogic

    return bool(vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap_node, segmentation_node, ""))


def _segments(segmentation_node) -> list[tuple[str, str]]:
    segmentation = segmentation_node.GetSegmentation()
    return [(segmentation.GetNthSegmentID(n), segmentation.GetNthSegment(n).GetName())
            for n in range(segmentation.GetNumberOfSegments())]


def segment_ids(segmentation_node) -> list[str]:
    return [segment_id for segment_id, _ in _segments(segmentation_node)]


def check_untransformed(*nodes) -> None:
    """Refuse inputs under a parent transform: the label map would be taken in the node's own coordinates
    while Slicer shows it transformed, so results and edits would not overlay what the user sees."""
    for node in nodes:
        transform = node.GetParentTransformNode() if node is not None else None
        if transform is not None:
            raise InputError(f"'{node.GetName()}' is under the transform '{transform.GetName()}'; harden the transform "
                             "(Data module: right-click the node, 'Harden transform') or remove it, then try again")


def auto_mapping(segmentation_node, family: Family | str) -> SegmentMapping:
    """Mapping from segment names; every segment must name a tissue of the family."""
    family = family_of(family)
    segments = _segments(segmentation_node)
    if not segments:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' has no segments; paint the "
                         f"{DISPLAY[family.tissue_name]} and the tumour in the Segment Editor first")
    mapping = SegmentMapping(family)
    unknown = []
    for segment_id, name in segments:
        tissue = tissue_for_name(name, family)
        if tissue is None:
            unknown.append(name)
        else:
            mapping.segments.setdefault(tissue, []).append(segment_id)
    names = ", ".join(DISPLAY[t] for t in family.paint_order)
    if unknown:
        raise InputError(
            f"segment name(s) {', '.join(repr(n) for n in unknown)} name no tissue of the {family.name} model; "
            f"rename the segments to {names}, or choose which segment is which in the module's segment mapping")
    _check_required(mapping, segmentation_node)
    return mapping


def explicit_mapping(segmentation_node, family: Family | str, choice: dict) -> SegmentMapping:
    """Mapping from ``{tissue: segment ID or name (or a list of them)}``; tissue names as in ``--labels``.
    Tissues not in ``choice`` take the segments named after them; other segments are left out."""
    family = family_of(family)
    by_id = dict(_segments(segmentation_node))
    by_name = {name: sid for sid, name in by_id.items()}
    chosen_tissues = {_tissue_name(t, family) for t, c in choice.items() if c}
    chosen_ids = {by_name.get(i, i) for c in choice.values() if c for i in ([c] if isinstance(c, str) else c)}
    mapping = SegmentMapping(family)
    for segment_id, name in by_id.items():
        tissue = tissue_for_name(name, family)
        if tissue is not None and tissue not in chosen_tissues and segment_id not in chosen_ids:
            mapping.segments.setdefault(tissue, []).append(segment_id)
    for tissue_name, chosen in choice.items():
        if not chosen:
            continue
        tissue = _tissue_name(tissue_name, family)
        for item in [chosen] if isinstance(chosen, str) else list(chosen):
            segment_id = item if item in by_id else by_name.get(item)
            if segment_id is None:
                raise InputError(f"segmentation '{segmentation_node.GetName()}' has no segment '{item}'; choose one "
                                 f"of {', '.join(repr(n) for n in by_name) or 'its segments (it has none)'}")
            mapping.segments.setdefault(tissue, []).append(segment_id)
    _check_required(mapping, segmentation_node)
    return mapping


def _tissue_name(name: str, family: Family) -> str:
    for tissue in family.paint_order:
        spellings = ALIASES.get(tissue, (tissue,)) + EXTRA_NAMES[family.name].get(tissue, ())
        if _normalise(name) in {_normalise(s) for s in spellings}:
            return tissue
    raise InputError(f"unknown tissue '{name}' for the {family.name} model; use "
                     + ", ".join(family.paint_order))


def _check_required(mapping: SegmentMapping, segmentation_node) -> None:
    tissue = mapping.family.tissue_name
    if not mapping.segments.get(tissue):
        raise InputError(
            f"segmentation '{segmentation_node.GetName()}' has no {DISPLAY[tissue]} segment; add a segment named "
            f"'{DISPLAY[tissue]}' covering the whole {DISPLAY[tissue]}, or choose it in the segment mapping")


@dataclass
class LabelExport:
    """The official label map of a segmentation, on the reference grid."""

    image: sitk.Image  # official labels (uint8), LPS geometry of the grid
    ijk_to_ras: np.ndarray  # the grid's exact 4x4 IJK->RAS matrix (as Slicer has it)
    dimensions: tuple[int, int, int]  # (I, J, K)
    mapping: SegmentMapping


def _export(scene, segmentation_node, segment_ids: list[str], reference):
    """(array (Z, Y, X), IJK->RAS, dimensions): segment n gets value n + 1, later ones on top."""
    from slicer import vtkSegmentation, vtkSlicerSegmentationsModuleLogic

    check_untransformed(segmentation_node, reference)
    ids = vtk.vtkStringArray()
    for segment_id in segment_ids:
        ids.InsertNextValue(segment_id)
    with scene_guard(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__MedDDPMSynth_temp__")
        labelmap.SetHideFromEditors(True)  # short-lived: never offered in a node selector
        ok = vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap, reference, vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not ok or labelmap.GetImageData() is None:
            raise InputError(f"segmentation '{segmentation_node.GetName()}' could not be turned into a label map; "
                             "choose a reference volume (or set the segmentation's geometry) and try again")
        return array_from_node(labelmap), ijk_to_ras(labelmap), labelmap.GetImageData().GetDimensions()


def export_labels(scene, segmentation_node, mapping: SegmentMapping, reference=None) -> LabelExport:
    """The segmentation as an official label map in the reference geometry; clear errors for bad input."""
    family = mapping.family
    ordered = mapping.ordered()
    values, matrix, dims = _export(scene, segmentation_node, [s for _, s in ordered], reference)
    official_of = dict(zip(family.condition_names, family.condition_labels))
    lut = np.zeros(len(ordered) + 1, np.uint8)
    for n, (tissue, _) in enumerate(ordered, start=1):
        lut[n] = official_of[tissue]
    names = dict(_segments(segmentation_node))
    counts = np.bincount(values.ravel().astype(np.int64), minlength=len(ordered) + 1)
    for n, (tissue, segment_id) in enumerate(ordered, start=1):
        if counts[n] == 0 and tissue == family.tissue_name:  # an empty tumour segment is a healthy head
            raise InputError(f"segment '{names[segment_id]}' ({DISPLAY[tissue]}) is empty in the reference geometry; "
                             "paint it, remove it from the mapping, or choose the reference volume it was painted on")
    image = sitk.GetImageFromArray(lut[values])
    geometry = itk_geometry(matrix)
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    explicit = LabelMapping(family, {n: (v,) for n, v in official_of.items()})
    to_official(image, family, explicit)  # the engine's checks: a tissue exists, tumours touch it
    return LabelExport(image, matrix, tuple(dims), mapping)


def import_labels(scene, segmentation_node, export: LabelExport, official_zyx: np.ndarray) -> None:
    """Write an official label map (on the export's grid) back into the mapped segments."""
    family = export.mapping.family
    ids = vtk.vtkStringArray()
    for tissue in family.condition_names:
        chosen = export.mapping.segments.get(tissue, [])
        if len(chosen) > 1:
            raise InputError(f"{len(chosen)} segments are mapped to {DISPLAY[tissue]}; merge them into one "
                             "segment (Segment Editor: Logical operators) before editing the tumour")
        if chosen:
            ids.InsertNextValue(chosen[0])
        else:  # an edit never creates a layer that was absent, but keep label values aligned with IDs
            ids.InsertNextValue(segmentation_node.GetSegmentation().AddEmptySegment("", DISPLAY[tissue]))
    _import(scene, segmentation_node, official_zyx.astype(np.uint8), export.ijk_to_ras, ids)


def _import(scene, segmentation_node, labels_zyx: np.ndarray, matrix: np.ndarray, ids) -> None:
    from slicer import vtkSlicerSegmentationsModuleLogic

    with scene_guard(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__MedDDPMSynth_temp__")
        labelmap.SetHideFromEditors(True)  # short-lived: never offered in a node selector
        update_node_from_array(labelmap, labels_zyx, matrix)
        if not vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node, ids):
            raise InputError(f"could not write the edited tumour into '{segmentation_node.GetName()}'; "
                             "undo and try again")


def snapshot(scene, segmentation_node, mapping: SegmentMapping, reference=None) -> dict:
    """Each mapped segment's voxels on the reference grid, for undo (overlaps kept)."""
    saved = {}
    for _, segment_id in mapping.ordered():
        values, matrix, _ = _export(scene, segmentation_node, [segment_id], reference)
        saved[segment_id] = (values > 0).astype(np.uint8), matrix
    return saved


def restore(scene, segmentation_node, saved: dict) -> None:
    for segment_id, (binary, matrix) in saved.items():
        if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
            continue  # the user deleted it meanwhile
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        _import(scene, segmentation_node, binary, matrix, ids)
