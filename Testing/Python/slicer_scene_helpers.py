"""Helpers for the Slicer scene-logic tests: real MRML scenes (``slicer-core`` wheel) with segmentations."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "MedDDPMSynth"
if str(MODULE_DIR) not in sys.path:  # the Slicer-side package lives beside the engine, as in Slicer
    sys.path.insert(0, str(MODULE_DIR))

import slicer  # noqa: E402  (the slicer-core wheel: vtkMRMLScene, segmentation logic; pip install -e .[test])

from cli_helpers import head_labels, oblique_direction  # noqa: E402
from MedDDPMSynthSlicerLib.scene_io import update_node_from_array  # noqa: E402

SPACING = 4.0
NAMES = {1: "head", 2: "Tumour"}


def fast(**overrides):
    """Settings of a seconds-long generation with the tiny model ('tiny16' of the model_home fixture)."""
    from MedDDPMSynthSlicerLib import GenerationSettings

    return GenerationSettings(**{"model": "tiny16", "sampler": "ddim", "steps": 2, "device": "cpu", **overrides})


def matrix(kind: str, spacing: float = SPACING) -> np.ndarray:
    """IJK->RAS of a 40x40x30 grid as Slicer has it for an LPS-, RAS- or obliquely-oriented file."""
    directions = {
        "LPS": np.diag([-1.0, -1.0, 1.0]),  # a DICOM/ITK-style volume: i to the left, j posterior
        "RAS": np.eye(3),  # a NIfTI-style volume with an identity RAS affine
        "oblique": np.array(oblique_direction(25.0)).reshape(3, 3),
    }[kind]
    m = np.eye(4)
    m[:3, :3] = directions * spacing
    centre = directions @ (np.array([39, 39, 29]) * spacing / 2)
    m[:3, 3] = np.array([3.0, -7.0, 11.0]) - centre  # off-centre so a wrong origin sign shows
    return m


def new_scene():
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)  # the application always has one
    scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode", "Red")
    return scene


def add_segmentation(scene, labels_xyz: np.ndarray, ijk_to_ras: np.ndarray, names: dict[int, str],
                     keep_reference: bool = True, name: str = "Segmentation"):
    """A segmentation node made from a label array (one segment per value, named by ``names``) and the
    labelmap node it came from (the reference volume; removed when ``keep_reference`` is False)."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} labels")
    update_node_from_array(labelmap, np.ascontiguousarray(labels_xyz.transpose(2, 1, 0)), ijk_to_ras)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
    if labels_xyz.any():
        assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation, "")
    seg = segmentation.GetSegmentation()
    for n in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(n)
        segment.SetName(names[segment.GetLabelValue()])
    if not keep_reference:
        scene.RemoveNode(labelmap)
        labelmap = None
    return segmentation, labelmap


def standard_head(tumour_radius_mm: float = 20.0) -> np.ndarray:
    """(X, Y, Z) labels on 40x40x30: head 1, tumour 2 (big enough for a 12 mm model grid)."""
    return head_labels(size=(40, 40, 30), spacing=(SPACING,) * 3, tumour_radius_mm=tumour_radius_mm)


def node_count(scene) -> int:
    return scene.GetNumberOfNodes()


def tumour_centroid_ras(labels_zyx: np.ndarray, m: np.ndarray) -> np.ndarray:
    kji = np.argwhere(labels_zyx == 2).mean(0)
    return (m @ np.r_[kji[::-1], 1.0])[:3]
