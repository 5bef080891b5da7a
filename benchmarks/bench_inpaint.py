#!/usr/bin/env python
"""Seam quality of local re-generation (RePaint) with fast samplers against the official RePaint run.

On the demo model and the example mask (model grid): a previous image is generated, the tumour is moved
by ``--shift`` voxels, and the region (old + new tumour, dilated by ``--margin`` voxels) is regenerated with
the official RePaint (ddpm, all T steps, 10-step jumps, 3 rounds) and with RePaint on fast samplers'
sub-sequences (repaint_fast.py). One JSON line per case:

* ``seam``: :func:`regenerate.seam_score` of the result, i.e. the mean gradient magnitude on the region's
  boundary and in bands just inside and outside; ``seam_ratio`` = boundary / mean(inside, outside): a
  visible seam raises it above the official run's value.
* ``mean_region`` / ``std_region``: intensity inside the region (the official run's for comparison),
  ``evaluations``, ``seconds``.
* ``tumour_mean`` (the moved tumour) against ``brain_mean`` (the head outside the region): the moved tumour
  should be as bright as in a free generation of the edited mask (its own line, ``free generation``).

A first line gives the same score for the unedited previous image at the same region: the value without
any seam. The official run is slow (730 evaluations), so put it last.

  OMP_NUM_THREADS=1 python benchmarks/bench_inpaint.py --cases preview,ddim@25,ddim@50,ddpm
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from MedDDPMSynthLib.model.api import inpainting_evaluations
from MedDDPMSynthLib.store.models import load_named_model
from MedDDPMSynthLib.workflows.pipeline import GenerateRequest, prepare_labels
from MedDDPMSynthLib.model.presets import preset_settings
from MedDDPMSynthLib.training.evaluation import seam_score
from MedDDPMSynthLib.model.sampling import SamplerSettings

REPO = Path(__file__).resolve().parents[1]


def _settings(spec: str, model) -> SamplerSettings:
    """ddpm | preview | NAME[:SPACING]@STEPS"""
    if spec in ("ddpm", "exact"):
        return SamplerSettings("ddpm")
    if spec == "preview":
        return preset_settings("preview", model.timesteps, model.info.metadata)
    spec, _, steps = spec.partition("@")
    name, _, spacing = spec.partition(":")
    return SamplerSettings(name, int(steps), spacing=spacing or "uniform")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--mask", type=Path, default=REPO / "MedDDPMSynth" / "Resources" / "Examples" / "demo_mask.nii.gz")
    parser.add_argument("--cases", default="preview,ddim@25,ddim@50,ddpm")
    parser.add_argument("--shift", type=int, default=4, help="tumour shift along X in model voxels")
    parser.add_argument("--margin", type=int, default=2, help="region dilation in model voxels")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    model = load_named_model(args.model, device="cpu")
    _, labels, _, _ = prepare_labels(GenerateRequest(mask=args.mask, output=Path("unused")), model)
    previous = model.generate(labels, seed=0, sampler=preset_settings("preview", model.timesteps))[0]
    head, tumour = labels >= 1, labels >= 2
    moved = np.roll(tumour, args.shift, axis=0) & head
    new_labels = np.where(head, 1, 0).astype(labels.dtype)
    new_labels[moved] = 2
    region = ndimage.binary_dilation(tumour | moved, iterations=args.margin)
    region_img = sitk.GetImageFromArray(region.transpose(2, 1, 0).astype(np.uint8))
    common = {"model": args.model, "grid_xyz": list(model.grid_xyz), "timesteps": model.timesteps,
              "region_voxels": int(region.sum()), "seed": args.seed, "threads": torch.get_num_threads()}
    seam = seam_score(sitk.GetImageFromArray(previous[0].transpose(2, 1, 0)), region_img)  # no seam: the baseline
    print(json.dumps({**common, "case": "previous image, unedited (no seam)", "seam": {k: round(v, 4) for k, v in seam.items()},
                      "seam_ratio": round(seam["boundary"] / (0.5 * (seam["inside"] + seam["outside"])), 3)}), flush=True)
    brain = head & ~region

    def brightness(image: np.ndarray) -> dict:
        return {"tumour_mean": round(float(image[moved].mean()), 4), "brain_mean": round(float(image[brain].mean()), 4)}

    free = model.generate(new_labels, seed=args.seed, sampler=preset_settings("preview", model.timesteps))[0, 0]
    print(json.dumps({**common, "case": "free generation of the edited mask (preview)", **brightness(free)}), flush=True)
    images = {}
    for spec in args.cases.split(","):
        settings = _settings(spec, model)
        start = time.perf_counter()
        image = model.generate(new_labels, seed=args.seed, sampler=settings, keep_image=previous,
                               regenerate=region, harmonize=3)[0, 0]
        seconds = time.perf_counter() - start
        seam = seam_score(sitk.GetImageFromArray(image.transpose(2, 1, 0)), region_img)
        row = {**common, "case": spec, "sampler": settings.name, "steps": settings.steps, "spacing": settings.spacing,
               "evaluations": inpainting_evaluations(model._inpainting(previous, region, 3), settings, model.timesteps),
               "seconds": round(seconds, 1), "seam": {k: round(v, 4) for k, v in seam.items()},
               "seam_ratio": round(seam["boundary"] / (0.5 * (seam["inside"] + seam["outside"])), 3),
               "mean_region": round(float(image[region].mean()), 4), "std_region": round(float(image[region].std()), 4),
               **brightness(image),
               "kept_exact": bool(np.array_equal(image[~region], previous[0][~region]))}
        images[spec] = image
        print(json.dumps(row), flush=True)
    exact = next((images[k] for k in ("ddpm", "exact") if k in images), None)
    for spec, image in images.items():  # how far each fast run is from the official one, voxel by voxel
        if exact is not None and image is not exact:
            print(json.dumps({**common, "case": spec, "mean_abs_diff_to_exact_in_region":
                              round(float(np.abs(image - exact)[region].mean()), 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
