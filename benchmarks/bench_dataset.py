#!/usr/bin/env python
"""Dataset throughput: ``medddpm-synth dataset`` end to end (masks read, edits, sampling, NIfTI writing,
manifest, contact sheet), one JSON line with cases per hour and seconds per case.

The masks are copies of the bundled example mask (``MedDDPMSynth/Resources/Examples/demo_mask.nii.gz``). The model is
a checkpoint path (default: the tiny official-format test model) on ``--grid``/``--spacing``, or a
catalogue name ("wholehead", "demo") on its own grid. Model loading is not timed.

  python benchmarks/bench_dataset.py --device cpu --masks 4 --samples-per-mask 2 --grid 32,32,32 --spacing 6
  python benchmarks/bench_dataset.py --device cuda --random wholehead --masks 8 --samples-per-mask 4 \\
      --sampler dpm++ --steps 25 --precision bf16 --batch 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_MASK = REPO / "MedDDPMSynth" / "Resources" / "Examples" / "demo_mask.nii.gz"
TINY = REPO / "Testing" / "Data" / "official" / "tiny_wholehead_ckpt.pt"


def _triple(text: str, cast) -> tuple:
    values = tuple(cast(v) for v in text.split(","))
    return values * 3 if len(values) == 1 else values


def _random_checkpoint(path: Path) -> Path:
    """An official-format checkpoint of the released whole-head architecture with random weights."""
    from MedDDPMSynthLib import GaussianDiffusion, UNetConfig
    from MedDDPMSynthLib.model.checkpoint import save_official_checkpoint

    torch.manual_seed(0)
    diffusion = GaussianDiffusion(UNetConfig(3, 1, 64, (1, 1, 2, 3, 4), 1, (8,)), timesteps=250)
    state = diffusion.state_dict()
    save_official_checkpoint(path, state, state, step=0)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(TINY), help="checkpoint path or catalogue name (default: tiny test model)")
    parser.add_argument("--grid", help="X,Y,Z model grid for a checkpoint path (default: the file's own)")
    parser.add_argument("--spacing", help="model grid spacing in mm (one value or X,Y,Z) for a checkpoint path")
    parser.add_argument("--masks", type=int, default=4, help="number of masks (copies of the example mask)")
    parser.add_argument("--samples-per-mask", type=int, default=1)
    parser.add_argument("--edits", default="none")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--random", choices=["wholehead"],
                        help="instead of --model: the official whole-head config (128^3, 1.5 mm) with random weights")
    args = parser.parse_args()

    from MedDDPMSynthLib.model.api import load_model
    from MedDDPMSynthLib.data.dataset import DatasetRequest, build_dataset
    from MedDDPMSynthLib.data.dataset_plan import EditSettings
    from MedDDPMSynthLib.store.models import load_named_model
    from MedDDPMSynthLib.model.sampling import SamplerSettings

    work = Path(tempfile.mkdtemp(prefix="bench_dataset_"))
    if args.random:
        args.model = str(_random_checkpoint(work / f"random_{args.random}.pt"))
    if Path(args.model).is_file():
        model = load_model(args.model, device=args.device, grid_xyz=args.grid and _triple(args.grid, int),
                           spacing_mm=args.spacing and _triple(args.spacing, float))
    else:
        model = load_named_model(args.model, device=args.device)
    try:
        masks = work / "masks"
        masks.mkdir()
        for i in range(args.masks):
            shutil.copyfile(EXAMPLE_MASK, masks / f"mask{i:03d}.nii.gz")
        request = DatasetRequest(
            masks=masks, output=work / "out", samples_per_mask=args.samples_per_mask, edits=EditSettings(args.edits),
            sampler=SamplerSettings(args.sampler, args.steps, precision=args.precision), batch=args.batch,
        )
        started = time.perf_counter()
        summary = build_dataset(request, model, args.model)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cases = len(summary.written)
    device_name = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else \
        f"cpu x{torch.get_num_threads()} threads"
    print(json.dumps({
        "bench": "dataset", "model": Path(args.model).name, "family": model.family.name,
        "grid_xyz": list(model.grid_xyz), "spacing_mm": list(model.spacing_mm), "timesteps": model.timesteps,
        "sampler": args.sampler, "steps": request.sampler.evaluations(model.timesteps), "precision": args.precision,
        "batch": args.batch, "edits": args.edits, "masks": args.masks, "cases": cases,
        "seconds_total": round(seconds, 2), "seconds_per_case": round(seconds / max(cases, 1), 3),
        "cases_per_hour": round(3600 * cases / seconds, 1), "device": str(model.device), "device_name": device_name,
        "torch": torch.__version__,
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
