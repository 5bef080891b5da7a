#!/usr/bin/env python
"""Before/after figure of a tumour shift with local re-generation, and of a tumour inserted into the MNI T1.

Runs the user-facing commands (generate, tumor shift, generate --keep, insert) with the bundled demo model
on the bundled example mask, checks the promise of both edits (voxels outside the regenerated region are
bit-identical) and writes a PNG: one row per image, three orthogonal slices through the tumour (outlined
in red). Prints one JSON line with the numbers.

  python benchmarks/figure_edit_insert.py -o docs/images/edit_and_insert.png --work /tmp/figure
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedDDPMSynthLib.cli.commands import main as cli
from MedDDPMSynthLib.data.demo_data import TEMPLATE_FILES, find_template_dir
from MedDDPMSynthLib.training.evaluation import normalise
from MedDDPMSynthLib.io.preview import preview_png

REPO = Path(__file__).resolve().parents[1]
MASK = REPO / "MedDDPMSynth" / "Resources" / "Examples" / "demo_mask.nii.gz"


def _run(*args: str) -> None:
    code = cli([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"medddpm-synth {' '.join(map(str, args))} failed with exit code {code}")


def _row(image_path: Path, labels: sitk.Image, tumour_value: int) -> np.ndarray:
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path))).transpose(2, 1, 0)
    tumour = sitk.GetArrayFromImage(labels).transpose(2, 1, 0) == tumour_value
    return sitk.GetArrayFromImage(preview_png(normalise(image), tumour.astype(np.uint8), [1], min_height=200))


def _stack(rows: list[np.ndarray], gap: int = 6) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0))) for r in rows])


def _unchanged_outside(before: Path, after: Path) -> dict:
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(before)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(after)))
    changed = a != b
    return {"voxels_changed": int(changed.sum()), "fraction_changed": round(float(changed.mean()), 5)}


def _brightness(before: Path, after: Path, tumour: sitk.Image) -> dict:
    """The inserted tumour's mean against the scan's tissue it replaced, and the regenerated 4-voxel rim's."""
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(before))).astype(float)
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(after))).astype(float)
    inside = sitk.GetArrayFromImage(tumour) > 0
    rim = (sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.Cast(tumour > 0, sitk.sitkUInt8), [4, 4, 4])) > 0) & ~inside
    return {"tumour_mean": round(b[inside].mean(), 1), "replaced_tissue_mean": round(a[inside].mean(), 1),
            "rim_mean": round(b[rim].mean(), 1), "rim_mean_before": round(a[rim].mean(), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "images" / "edit_and_insert.png")
    parser.add_argument("--work", type=Path, required=True, help="folder for the intermediate files")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--vector", default="-14,-12,0", help="tumour shift in mm (RAS)")
    parser.add_argument("--sampler", default="preview", help="sampler preset or name of every step (default preview, "
                        "the CPU default; exact: the official 250-step sampler and RePaint)")
    parser.add_argument("--harmonize", default="3", help="RePaint resampling rounds of both edits (default 3)")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # 1. a synthetic brain, 2. the tumour moved, 3. only the tumour's neighbourhood regenerated
    _run("generate", "--mask", MASK, "--model", args.model, "-o", work / "first", "--sampler", args.sampler,
         "--seed", "3", "--overwrite", "--quiet")
    first = next((work / "first").glob("*_s00*.nii.gz"))
    _run("tumor", "shift", "--mask", MASK, "--ras", f"--vector={args.vector}", "-o", work / "moved.nii.gz", "--overwrite")
    _run("generate", "--mask", work / "moved.nii.gz", "--model", args.model, "-o", work / "second", "--keep", first,
         "--previous-mask", MASK, "--margin", "8", "--seed", "4", "--harmonize", args.harmonize, "--sampler", args.sampler,
         "--overwrite", "--quiet")
    second = next((work / "second").glob("*_s00*.nii.gz"))

    # 4. the example tumour drawn onto the real MNI T1 (its own 1 mm grid), inserted by the model
    template = find_template_dir()
    scan = sitk.ReadImage(str(template / TEMPLATE_FILES["t1"]))
    tumour = sitk.Resample(sitk.ReadImage(str(MASK)) == 2, scan, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    sitk.WriteImage(sitk.Cast(tumour, sitk.sitkUInt8), str(work / "mni_tumour.nii.gz"))
    sitk.WriteImage(scan, str(work / "mni_t1.nii.gz"))
    _run("insert", "--scan", work / "mni_t1.nii.gz", "--tumor", work / "mni_tumour.nii.gz", "--model", args.model,
         "-o", work / "inserted", "--seed", "5", "--harmonize", args.harmonize, "--sampler", args.sampler, "--overwrite", "--quiet")
    inserted = next(p for p in (work / "inserted").glob("*.nii.gz") if "mask" not in p.name)

    mask, moved = sitk.ReadImage(str(MASK)), sitk.ReadImage(str(work / "moved.nii.gz"))
    rows = [_row(first, mask, 2), _row(second, moved, 2), _row(work / "mni_t1.nii.gz", tumour, 1),
            _row(inserted, tumour, 1)]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(_stack(rows), isVector=True), str(args.output))
    print(json.dumps({
        "figure": str(args.output), "rows": ["generated", "tumour shifted + local re-generation",
                                             "MNI152 T1 (real)", "MNI152 T1 + inserted tumour"],
        "shift_mm": args.vector, "regeneration": _unchanged_outside(first, second),
        "insertion": {**_unchanged_outside(work / "mni_t1.nii.gz", inserted),
                      **_brightness(work / "mni_t1.nii.gz", inserted, tumour)},
        "seconds": round(time.perf_counter() - started, 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
