#!/usr/bin/env python
"""Quality of the fast samplers against the exact 250-step sampler, one JSON line per case.

For one mask on the model grid, ``--samples`` seeds are sampled with the official ``ddpm`` sampler (all
T steps: the reference distribution) and with each fast setting (``ddim`` and ``dpm++`` at 10/25/50
steps, same seeds). Each case reports, against the reference set:

* ``ms_ssim_to_ref``: mean MS-SSIM of every fast sample to every reference sample, next to the
  reference set's own mean pairwise MS-SSIM (``ms_ssim_ref_ref``): a fast sampler from the same
  distribution scores about the same; a blurry or wrong one scores differently.
* ``mmd``: MONAI's MMD between the fast and the reference set (0 = same distribution).
* mean and standard deviation of the intensity inside head/brain and tumour, and their differences to
  the reference (``d_mean_*``), and the tumour-vs-surrounding contrast (Cohen's d) next to the reference's.
* seconds per sample, measured in this run.

A last line compares ``--precision bf16`` with fp32 on the same noise (max and mean |diff|).

  python benchmarks/bench_quality.py --model demo --samples 4 --device cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from MedDDPMSynthLib import SamplerSettings
from MedDDPMSynthLib.training.evaluation import mmd, ms_ssim, tumour_contrast
from MedDDPMSynthLib.store.models import load_named_model
from MedDDPMSynthLib.workflows.pipeline import GenerateRequest, prepare_labels
from MedDDPMSynthLib.model.presets import preset_settings

REPO = Path(__file__).resolve().parents[1]


def _sample(model, labels, seeds, settings) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    images = np.concatenate([model.generate(labels, seed=s, sampler=settings) for s in seeds])
    return images[:, 0], (time.perf_counter() - start) / len(seeds)  # first channel (T1/T1c)


def _unit(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, -1, 1) + 1) / 2


def _stats(images: np.ndarray, labels: np.ndarray, spacing) -> dict:
    head, tumour = labels == 1, labels >= 2
    contrast = [tumour_contrast(im, labels, tumour_labels=(2, 3), spacing_mm=spacing) for im in images]
    return {
        "mean_head": float(images[:, head].mean()), "std_head": float(images[:, head].std()),
        "mean_tumour": float(images[:, tumour].mean()) if tumour.any() else None,
        "std_tumour": float(images[:, tumour].std()) if tumour.any() else None,
        "tumour_cohens_d": float(np.mean([c["cohens_d"] for c in contrast])) if all(contrast) else None,
    }


def _pairs(a: np.ndarray, b: np.ndarray, same: bool) -> float:
    scores = [ms_ssim(x, y) for i, x in enumerate(a) for j, y in enumerate(b) if not (same and j <= i)]
    return float(np.mean(scores))


def _cases(samplers: str, steps: str) -> list[SamplerSettings]:
    """NAME[:SPACING[:PRECISION]][@STEPS],... ; without @STEPS every count of --steps."""
    cases = []
    for spec in samplers.split(","):
        spec, _, own_steps = spec.partition("@")
        name, spacing, precision = (spec.split(":") + ["", ""])[:3]
        for count in ([int(own_steps)] if own_steps else [int(s) for s in steps.split(",")]):
            cases.append(SamplerSettings(name, count, spacing=spacing or "uniform", precision=precision or "fp32"))
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--mask", type=Path, default=REPO / "MedDDPMSynth" / "Resources" / "Examples" / "demo_mask.nii.gz")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samplers", default="ddim,dpm++,dpm++:quadratic,dpm++3m:quadratic",
                        help="NAME[:SPACING[:PRECISION]][@STEPS],... (e.g. dpm++3m:quadratic:bf16@15)")
    parser.add_argument("--steps", default="10,25,50")
    parser.add_argument("--bf16-only", action="store_true",
                        help="only compare bf16 with fp32 (dpm++, 25 steps) for each of --samples seeds")
    parser.add_argument("--compare-exact-bf16", action="store_true", help="also compare bf16 with fp32 for the exact sampler (slow)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    model = load_named_model(args.model, device=args.device)
    _, labels, _, _ = prepare_labels(GenerateRequest(mask=args.mask, output=Path("unused")), model)
    labels_zyx = labels.transpose(2, 1, 0)  # metrics on (Z, Y, X) arrays with spacing in that order
    spacing_zyx = model.spacing_mm[::-1]
    seeds = list(range(args.samples))
    common = {"model": args.model, "grid_xyz": list(model.grid_xyz), "timesteps": model.timesteps,
              "samples": args.samples, "device": args.device, "torch": torch.__version__}

    if args.bf16_only:
        return _compare_bf16(model, labels, seeds, [preset_settings("preview", model.timesteps, model.info.metadata)], common)
    reference, ref_seconds = _sample(model, labels, seeds, SamplerSettings("ddpm"))
    ref = _unit(reference.transpose(0, 3, 2, 1))
    ref_stats = _stats(ref, labels_zyx, spacing_zyx)
    ref_ref = _pairs(ref, ref, same=True)
    print(json.dumps({**common, "sampler": "ddpm", "steps": model.timesteps, "seconds_per_sample": round(ref_seconds, 2),
                      "ms_ssim_ref_ref": round(ref_ref, 4), **ref_stats}), flush=True)

    for settings in _cases(args.samplers, args.steps):
        name, steps = settings.name, settings.steps
        images, seconds = _sample(model, labels, seeds, settings)
        fast = _unit(images.transpose(0, 3, 2, 1))
        stats = _stats(fast, labels_zyx, spacing_zyx)
        row = {**common, "sampler": name, "spacing": settings.spacing, "steps": steps, "seconds_per_sample": round(seconds, 2),
               "precision": settings.precision, "speedup_vs_exact": round(ref_seconds / seconds, 1),
               "ms_ssim_to_ref": round(_pairs(fast, ref, same=False), 4), "ms_ssim_ref_ref": round(ref_ref, 4),
               "mmd": float(mmd(list(fast), list(ref))), **stats}
        for key in ("mean_head", "mean_tumour", "tumour_cohens_d"):
            if stats[key] is not None and ref_stats[key] is not None:
                row[f"d_{key}"] = round(stats[key] - ref_stats[key], 4)
        print(json.dumps(row), flush=True)

    # bf16 vs fp32 on the same noise: the preview preset and the exact sampler
    compared = [preset_settings("preview", model.timesteps, model.info.metadata)] + \
        ([SamplerSettings("ddpm")] if args.compare_exact_bf16 else [])
    return _compare_bf16(model, labels, [0], compared, common)


def _compare_bf16(model, labels, seeds, compared, common) -> int:
    """bf16 autocast against fp32 on the same noise (images in [-1, 1]), per sampler setting, with the
    seconds of each (measured one after the other: a ratio only on an otherwise idle machine)."""
    for settings in compared:
        for seed in seeds:
            started = time.perf_counter()
            fp32 = model.generate(labels, seed=seed, sampler=replace(settings, precision="fp32"))
            middle = time.perf_counter()
            bf16 = model.generate(labels, seed=seed, sampler=replace(settings, precision="bf16"))
            seconds = (middle - started, time.perf_counter() - middle)
            diff = np.abs(fp32 - bf16)
            print(json.dumps({**common, "compare": "bf16_vs_fp32", "sampler": settings.name, "steps": settings.steps or
                              model.timesteps, "seed": seed, "max_abs_diff": float(diff.max()),
                              "mean_abs_diff": float(diff.mean()), "seconds_fp32": round(seconds[0], 2),
                              "seconds_bf16": round(seconds[1], 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
