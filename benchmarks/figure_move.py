#!/usr/bin/env python
"""Before / preview / after figure of "Move tumour", made by the scene logic on a real MRML scene.

The bundled example mask becomes a segmentation (as the browser front loads an upload); the tumour is
moved with the move's transform node (a translation that pushes it through the head's edge, and a scale),
previewed, and applied. Three axial panels through where the tumour lands:

1. before: the head (grey) and the tumour (red);
2. preview: the tumour's copy under the transform, i.e. what is dragged (cyan outline, not clipped), and
   where it lands, clipped to the head as Apply will clip it (red); the old site outlined in yellow;
3. after Apply: the segmentation's labels (one engine edit; Undo would restore panel 1).

Prints one JSON line (voxel counts, clipping, timings of begin / preview / apply).

  python benchmarks/figure_move.py -o docs/images/move_tumour.png
  python benchmarks/figure_move.py --time-grid 256   # timings only: a ball head on a 256^3 1 mm grid
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedDDPMSynth"))  # the Slicer-side package, as Slicer puts it on the path

import slicer  # noqa: E402  (slicer-core wheel)

from MedDDPMSynthSlicerLib import SceneLogic, segments  # noqa: E402
from MedDDPMSynthSlicerLib.scene_io import ras_matrix_of, update_node_from_array  # noqa: E402

MASK = REPO / "MedDDPMSynth" / "Resources" / "Examples" / "demo_mask.nii.gz"


def load(scene, image: sitk.Image):
    """The mask as a segmentation (head, tumour) and a labelmap of its grid (the reference geometry)."""
    labels = sitk.GetArrayFromImage(image)
    reference = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
    update_node_from_array(reference, labels, ras_matrix_of(image))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "demo_mask")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(reference, segmentation, "")
    seg = segmentation.GetSegmentation()
    for n in range(seg.GetNumberOfSegments()):
        seg.GetNthSegment(n).SetName({1: "head", 2: "tumour"}[seg.GetNthSegment(n).GetLabelValue()])
    return segmentation, reference


def mask_of(scene, node, reference) -> np.ndarray:
    values, _, _ = segments._export(scene, node, segments.segment_ids(node), reference)
    return values > 0


def outline(region: np.ndarray) -> np.ndarray:
    inner = region & np.roll(region, 1, 0) & np.roll(region, -1, 0) & np.roll(region, 1, 1) & np.roll(region, -1, 1)
    return region & ~inner


def panel(head, fill=None, lines=(), ijk_to_ras=np.eye(4)) -> np.ndarray:
    """One axial slice (K fixed, rows J, columns I) as RGB, anterior up and the patient's right on the
    left (radiological, as Slicer shows it); axis-aligned grids."""
    rgb = np.where(head[..., None], 90, 0).repeat(3, axis=2).astype(np.uint8)
    if fill is not None:
        rgb[fill] = (220, 40, 40)
    for region, colour in lines:
        rgb[outline(region)] = colour
    if ijk_to_ras[1, 1] > 0:  # J runs anterior: the last row at the top
        rgb = rgb[::-1]
    if ijk_to_ras[0, 0] > 0:  # I runs to the right: the last column on the left
        rgb = rgb[:, ::-1]
    return rgb


def time_grid(size: int) -> dict:
    """begin / five previews of a growing drag / apply on a ball head (radius 0.39 size) with a 15 mm
    tumour, 1 mm voxels: what a drag costs on a large grid."""
    z, y, x = np.ogrid[:size, :size, :size]
    c = size / 2
    labels = np.zeros((size, size, size), np.uint8)
    labels[(x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2 < (0.39 * size) ** 2] = 1
    labels[(x - c - 0.09 * size) ** 2 + (y - c + 0.03 * size) ** 2 + (z - c - 0.05 * size) ** 2 < 15 ** 2] = 2
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    segmentation, _ = load(scene, sitk.GetImageFromArray(labels))
    logic = SceneLogic(scene)
    started = time.perf_counter()
    logic.begin_move(segmentation)
    result = {"grid": size, "tumour_voxels": int((labels == 2).sum()), "begin_s": time.perf_counter() - started}
    previews = []
    for k in range(1, 6):
        logic.set_move(segmentation, translation_ras=(3.0 * k, 2.0 * k, 0.0), scale=1 + 0.05 * k)
        started = time.perf_counter()
        logic.preview_move(segmentation)
        previews.append(time.perf_counter() - started)
    started = time.perf_counter()
    logic.apply_move(segmentation)
    result.update(preview_s=[round(p, 3) for p in previews], apply_s=time.perf_counter() - started)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "images" / "move_tumour.png")
    parser.add_argument("--translation", default="35,-20,0", help="RAS mm of the move (default pushes it out)")
    parser.add_argument("--scale", type=float, default=1.25)
    parser.add_argument("--zoom", type=int, default=3)
    parser.add_argument("--time-grid", type=int, default=0, help="only time a move on an N^3 synthetic head")
    args = parser.parse_args()
    if args.time_grid:
        print(json.dumps(time_grid(args.time_grid)))
        return 0
    translation = [float(v) for v in args.translation.split(",")]

    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    segmentation, reference = load(scene, sitk.ReadImage(str(MASK)))
    logic = SceneLogic(scene)
    before, ijk_to_ras = logic.label_array(segmentation)
    timings = {}
    started = time.perf_counter()
    transform = logic.begin_move(segmentation)
    timings["begin_s"] = time.perf_counter() - started
    logic.set_move(segmentation, translation_ras=translation, scale=args.scale)
    started = time.perf_counter()
    preview = logic.preview_move(segmentation)
    timings["preview_s"] = time.perf_counter() - started
    move = logic._moves()[segmentation.GetID()]
    landing = mask_of(scene, move["landing"], reference)
    ghost = next(scene.GetNthNodeByClass(n, "vtkMRMLSegmentationNode") for n in
                 range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))
                 if scene.GetNthNodeByClass(n, "vtkMRMLSegmentationNode").GetTransformNodeID() == transform.GetID())
    ghost.HardenTransform()  # where Slicer draws the dragged copy: its labelmap resampled by the transform
    dragged = mask_of(scene, ghost, reference)
    started = time.perf_counter()
    record = logic.apply_move(segmentation)
    timings["apply_s"] = time.perf_counter() - started
    after, _ = logic.label_array(segmentation)

    k = int(round(np.argwhere(after == 2)[:, 0].mean()))  # the axial slice through where it landed
    head = before[k] > 0
    panels = [panel(head, before[k] == 2, ijk_to_ras=ijk_to_ras),
              panel(head, landing[k], [(dragged[k], (60, 220, 255)), (before[k] == 2, (255, 220, 0))], ijk_to_ras),
              panel(head, after[k] == 2, ijk_to_ras=ijk_to_ras)]
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    figure = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    figure = figure.repeat(args.zoom, axis=0).repeat(args.zoom, axis=1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(figure, isVector=True), str(args.output))
    print(json.dumps({
        "figure": str(args.output), "panels": ["before", "preview (cyan: dragged copy, red: lands, clipped)",
                                               "after Apply"],
        "translation_ras_mm": translation, "scale": args.scale, "axial_slice": k,
        "tumour_voxels_before": int((before == 2).sum()), "dragged_voxels_in_grid": int(dragged.sum()),
        "preview_voxels": preview["voxels_after"], "applied_voxels": record["voxels_after"],
        "clipped_voxels": record["clipped_voxels"], "clipped_fraction": round(record["clipped_fraction"], 3),
        "landing_equals_applied": bool((landing == (after == 2)).all()),
        **{key: round(value, 3) for key, value in timings.items()},
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
