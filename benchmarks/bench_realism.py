#!/usr/bin/env python
"""How MRI-like a model's samples are, on held-out demo-data cases, against a trivial label->image baseline.

Held-out cases come from ``medddpm-synth demo-data`` with ``--seed`` (default 7: the demo model trains on
seed 2026 and its checkpoint was chosen on seed 11, so these masks and images were never seen). For every
case, ``--samples`` seeds are generated on the case's own grid (the model's grid) with each sampler setting,
and TorchIO's ``RandomLabelsToImage`` (a Gaussian per label, then blur and a bias field, as SynthSeg makes
its training images) draws the same number of images from the same masks: the trivial baseline.

One JSON line per generator (and a last ``"generator": "reference"`` line for the real images), with:

* ``background_mean/std`` and ``brain_mean/std``: intensities in the model's [-1, 1] (the reference images
  go through the model's own normalisation; the baseline is rescaled to [-1, 1] with its background at -1);
* ``tumour_contrast`` (tumour mean minus the mean of a 5 mm shell of brain around it) and ``tumour_cohens_d``;
* ``stripe_index``: slice-to-slice jumps along z relative to x and y. For each axis the mean intensity
  inside the brain of every slice (slices with >= 20 brain voxels) is taken and the variance of its first
  difference computed; the index is var_z / mean(var_x, var_y). Smooth anatomy gives ~1 (it changes
  slowly along every axis); per-slice intensity scales give stripes, a jump from one axial slice to
  the next, and a large index;
* ``fine_texture``: the standard deviation of the 3-D Laplacian inside the healthy brain (eroded 2 voxels),
  in the model's units: voxel-scale texture, to compare with the reference's (speckle: higher, blur: lower);
* ``anatomy_correlation``: Pearson correlation with the case's reference image inside the healthy brain (mean
  over samples): how much of the reference's own anatomy (grey/white matter, ventricles) a sample draws
  where the mask gives only "brain";
* ``ms_ssim_vs_reference`` (mean over samples) and ``mmd`` (first sample of each case vs the references),
  computed as ``medddpm-synth evaluate`` does (every volume min-max scaled to [0, 1]);
* ``seconds_per_sample``.

  python benchmarks/bench_realism.py --model demo --model old_demo.safetensors --cases 6 --samples 2 \\
      --work /tmp/realism --sampler dpm++:25 > benchmarks/results_realism_cpu.jsonl

Needs the bench extra (``pip install -e ".[bench]"``: nilearn for the template, MONAI, TorchIO).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedDDPMSynthLib import SamplerSettings
from MedDDPMSynthLib.data.demo_data import build_dataset
from MedDDPMSynthLib.training.evaluation import fine_texture, mmd, ms_ssim, normalise, stripe_index, tumour_contrast
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.model.presets import parse_sampler_spec
from MedDDPMSynthLib.store.models import load_named_model
from MedDDPMSynthLib.domain.normalisation import fit_intensity

def _read_xyz(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)


def _torchio_images(labels: np.ndarray, seeds, spacing) -> list[np.ndarray]:
    import torch
    import torchio as tio

    synth = tio.Compose([
        tio.RandomLabelsToImage(label_key="label", image_key="image"),
        tio.RandomBlur(std=(0, 1)),
        tio.RandomBiasField(),
    ])
    images = []
    for seed in seeds:
        torch.manual_seed(seed)
        subject = tio.Subject(label=tio.LabelMap(tensor=torch.from_numpy(labels[None].astype(np.int64)),
                                                 affine=np.diag([*spacing, 1.0])))
        image = synth(subject)["image"].data[0].numpy().astype(np.float32)
        # the baseline as a model would show it: brain voxels scaled like the model's data, background -1
        inside = labels > 0
        low, high = np.percentile(image[inside], (0.5, 99.5))
        scaled = np.clip(2 * (image - low) / max(high - low, 1e-6) - 1, -1, 1)
        images.append(np.where(inside, scaled, -1.0).astype(np.float32))
    return images


def _row(name: str, samples: dict[str, list[np.ndarray]], cases: dict, seconds: float | None) -> dict:
    stats = {k: [] for k in ("background", "brain")}
    contrasts, ds, stripes, textures, ssim, anatomy, firsts, refs = [], [], [], [], [], [], [], []
    for key, images in samples.items():
        labels, reference, spacing = cases[key]
        for image in images:
            stats["background"].append(image[labels == 0])
            stats["brain"].append(image[labels == 1])
            contrast = tumour_contrast(image, labels, (2,), 1, 5.0, spacing)
            if contrast is not None:
                contrasts.append(contrast["difference"])
                ds.append(contrast["cohens_d"])
            stripes.append(stripe_index(image, labels > 0))
            textures.append(fine_texture(image, labels == 1))
            if reference is not None:
                ssim.append(ms_ssim(normalise(image), normalise(reference)))
                anatomy.append(float(np.corrcoef(image[labels == 1], reference[labels == 1])[0, 1]))
        if reference is not None:
            firsts.append(normalise(images[0]))
            refs.append(normalise(reference))
    row = {"generator": name, "cases": len(samples), "samples": sum(len(v) for v in samples.values())}
    for region, values in stats.items():
        values = np.concatenate(values)
        row[f"{region}_mean"], row[f"{region}_std"] = round(float(values.mean()), 4), round(float(values.std()), 4)
    row["tumour_contrast"] = round(float(np.mean(contrasts)), 4) if contrasts else None
    row["tumour_cohens_d"] = round(float(np.mean(ds)), 3) if ds else None
    row["stripe_index"] = round(float(np.mean(stripes)), 3)
    row["fine_texture"] = round(float(np.nanmean(textures)), 4)
    if ssim:
        row["ms_ssim_vs_reference"] = round(float(np.mean(ssim)), 4)
        row["anatomy_correlation"] = round(float(np.mean(anatomy)), 3)
        row["mmd"] = round(mmd(firsts, refs), 5) if len(firsts) >= 2 else None
    if seconds is not None:
        row["seconds_per_sample"] = round(seconds, 2)
    return row


def _sampler(text: str) -> SamplerSettings:
    try:
        return parse_sampler_spec(text)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", metavar="NAME_OR_FILE",
                        help="model to measure, repeatable (default demo); the first one's grid and normalisation "
                             "define the held-out cases and the reference intensities")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7, help="demo-data seed of the held-out cases (default 7)")
    parser.add_argument("--sampler", action="append", type=_sampler, metavar="NAME[:STEPS[:SPACING[:PRECISION[:ETA]]]]",
                        help="sampler setting, repeatable (default dpm++:25); ETA > 0: stochastic ddim")
    parser.add_argument("--work", type=Path, required=True, help="folder for the held-out cases")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-baseline", action="store_true", help="skip the TorchIO baseline")
    args = parser.parse_args(argv)

    names = args.model or ["demo"]
    model = load_named_model(names[0], device=args.device)
    data = args.work / f"heldout_seed{args.seed}"
    build_dataset(data, args.cases, args.seed, model.grid_xyz, model.spacing_mm)
    cases = {}
    for mask in sorted((data / "masks").glob("case_*.nii.gz"))[: args.cases]:
        labels = _read_xyz(mask)
        image = _read_xyz(data / "images" / mask.name)
        reference = fit_intensity(image, model.family, model.options.normalisation, labels > 0).forward(image)
        cases[mask.name] = (labels, reference, sitk.ReadImage(str(mask)).GetSpacing())
    seeds = range(args.samples)
    for name in names:
        model = load_named_model(name, device=args.device)
        if tuple(model.grid_xyz) != tuple(next(iter(cases.values()))[0].shape):
            raise SystemExit(f"{name} runs on grid {model.grid_xyz}, the held-out cases are on another; compare "
                             "models of one grid")
        for settings in args.sampler or [SamplerSettings("dpm++", 25)]:
            start, samples = time.perf_counter(), {}
            for key, (labels, _, _) in cases.items():
                samples[key] = [model.generate(labels, seed=s, sampler=settings)[0, 0] for s in seeds]
            seconds = (time.perf_counter() - start) / (len(cases) * args.samples)
            label = f"{name} {settings.name}" + (f" {settings.steps}" if settings.steps else " (all steps)") + \
                (f" {settings.spacing}" if settings.spacing != "uniform" else "") + \
                (f" {settings.precision}" if settings.precision != "fp32" else "") + \
                (f" eta {settings.eta:g}" if settings.eta else "")
            print(json.dumps({**_row(label, samples, cases, seconds), "model_options": model.options.to_metadata()}))
            sys.stdout.flush()
    if not args.no_baseline:
        start = time.perf_counter()
        samples = {key: _torchio_images(labels, seeds, spacing) for key, (labels, _, spacing) in cases.items()}
        seconds = (time.perf_counter() - start) / (len(cases) * args.samples)
        print(json.dumps(_row("torchio RandomLabelsToImage+blur+bias", samples, cases, seconds)))
    references = {key: [reference] for key, (_, reference, _) in cases.items()}
    print(json.dumps({k: v for k, v in _row("reference", references, cases, None).items()
                      if k not in ("ms_ssim_vs_reference", "anatomy_correlation", "mmd")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
