#!/usr/bin/env python
"""One-step denoising error of models at several noise levels: noise a real (mask, image) pair to level t,
let each model predict x0 in one step (clipped, as the samplers do), print the RMSE inside the brain
(label 1) and the mean |error| in the background (label 0). An eps network's error grows as 1/sqrt(abar)
at the top levels; a v network's stays bounded. The image goes through the first model's normalisation.

  python benchmarks/probe_one_step.py --mask case.nii.gz --image case_image.nii.gz MODEL [MODEL ...]
"""

from __future__ import annotations

import argparse
import json

import SimpleITK as sitk
import torch

from MedDDPMSynthLib.store.models import load_named_model
from MedDDPMSynthLib.domain.normalisation import fit_intensity

LEVELS = (5, 10, 25, 50, 100, 200, 245)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", required=True)
    parser.add_argument("--image", required=True, help="on the mask's grid, which must be the models' grid")
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    labels = sitk.GetArrayFromImage(sitk.ReadImage(args.mask)).transpose(2, 1, 0)
    image = sitk.GetArrayFromImage(sitk.ReadImage(args.image)).transpose(2, 1, 0)
    models = [load_named_model(name) for name in args.models]
    first = models[0]
    x0_xyz = fit_intensity(image, first.family, first.options.normalisation, labels > 0).forward(image)
    x0 = torch.from_numpy(x0_xyz.transpose(2, 1, 0).copy())[None, None]
    brain = torch.from_numpy((labels == 1).transpose(2, 1, 0).copy())[None, None]
    background = torch.from_numpy((labels == 0).transpose(2, 1, 0).copy())[None, None]
    for name, model in zip(args.models, models):
        diffusion, cond, generator, row = model.diffusion, model.condition(labels), torch.Generator().manual_seed(0), {}
        for t in LEVELS:
            steps = torch.tensor([t])
            noisy = diffusion.q_sample(x0, steps, torch.randn(x0.shape, generator=generator))
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                eps = diffusion.predict_eps(noisy, cond, steps).float()
            error = diffusion.predict_x0(noisy, steps, eps) - x0
            row[f"t{t}"] = {"brain_rmse": round(float(error[brain].pow(2).mean().sqrt()), 3),
                            "background_mae": round(float(error[background].abs().mean()), 3)}
        print(json.dumps({"model": name, "prediction": model.diffusion.prediction, **row}))


if __name__ == "__main__":
    main()
