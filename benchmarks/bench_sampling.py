#!/usr/bin/env python
"""Sampling speed and memory, one JSON line per case (see benchmarks/README.md).

Each case runs in a fresh subprocess (clean peak memory: CUDA max_memory_allocated, CPU peak RSS) and
reports seconds per U-Net evaluation, projected totals for the exact sampler (all T steps) and a
25-step DPM-Solver++ preview, and - measured side by side in the same run - the speed-up over our fp32 eager exact mode of
the same model. ``--official-structure`` adds the official code's attention (einsum, fp32 softmax) as
a comparison case. ``--full`` runs both samplers instead of projecting.

  python benchmarks/bench_sampling.py --device cpu --models demo,wholehead --precisions fp32,bf16
  python benchmarks/bench_sampling.py --device cuda --models wholehead,brats,demo --precisions fp32,bf16 --full
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import torch

MODELS = {
    # name: (UNetConfig args, grid (X, Y, Z), note)
    "wholehead": (dict(in_channels=3, out_channels=1, model_channels=64, channel_mult=(1, 1, 2, 3, 4),
                       num_res_blocks=1, attention_ds=(8,)), (128, 128, 128), "official whole-head config, random weights"),
    "brats": (dict(in_channels=8, out_channels=4, model_channels=64, channel_mult=(1, 1, 2, 3, 4),
                   num_res_blocks=2, attention_ds=()), (192, 192, 144), "official BraTS config, random weights"),
    "demo": (None, None, "the model 'demo' resolves to"),
}


def _legacy_attention(self, x):
    """The official attention structure: einsum logits with c^-1/4 on q and k, softmax in fp32."""
    b, c, *spatial = x.shape
    flat = x.reshape(b, c, -1)
    qkv = self.qkv(self.norm(flat))
    bs, width, n = qkv.shape
    ch = width // (3 * self.num_heads)
    q, k, v = qkv.reshape(bs * self.num_heads, ch * 3, n).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, n)
    return (flat + self.proj_out(a)).reshape(b, c, *spatial)


def _build(model_name: str, device: torch.device):
    from MedDDPMSynthLib import GaussianDiffusion, UNetConfig
    from MedDDPMSynthLib.store.models import load_named_model

    if model_name == "demo":
        model = load_named_model("demo", device=str(device))
        return model.diffusion, model.grid_xyz
    config, grid, _ = MODELS[model_name]
    torch.manual_seed(0)
    with torch.device(device):
        diffusion = GaussianDiffusion(UNetConfig(**config), timesteps=250)
    return diffusion.eval(), grid


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_case(case: dict) -> dict:
    """One measurement (runs inside the child process)."""
    from MedDDPMSynthLib import SamplerSettings, SeededNoise
    from MedDDPMSynthLib.model.sampling import exact_math, make_eps_fn, run_sampler
    from MedDDPMSynthLib.model.unet import AttentionBlock

    device = torch.device(case["device"])
    torch.set_num_threads(torch.get_num_threads())
    if case["variant"] == "official-structure":
        AttentionBlock.forward = _legacy_attention
    diffusion, grid = _build(case["model"], device)
    if case["variant"] == "channels-last":
        diffusion = diffusion.to(memory_format=torch.channels_last_3d)
    c_img, c_cond = diffusion.image_channels, diffusion.condition_channels
    shape = (case["batch"], c_img, grid[2], grid[1], grid[0])
    cond = torch.zeros(case["batch"], c_cond, grid[2], grid[1], grid[0], device=device)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    eps_fn = make_eps_fn(diffusion, case["precision"])
    t = torch.full((case["batch"],), diffusion.num_timesteps - 1, device=device, dtype=torch.long)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad(), exact_math(case["precision"] == "fp32"):
        for _ in range(case["warmup"]):
            eps_fn(x, cond, t)
        _sync(device)
        start = time.perf_counter()
        for _ in range(case["evals"]):
            eps_fn(x, cond, t)
        _sync(device)
        per_eval = (time.perf_counter() - start) / case["evals"]
        totals = {}
        T = diffusion.num_timesteps
        preview = min(25, T)
        for label, settings in (("exact", SamplerSettings("ddpm", precision=case["precision"])),
                                ("preview", SamplerSettings("dpm++", preview, spacing="quadratic",
                                                            precision=case["precision"]))):
            steps = settings.evaluations(T)
            totals[f"steps_{label}"] = steps
            if case["full"]:
                noise = SeededNoise(list(range(case["batch"])), shape, device)
                _sync(device)
                start = time.perf_counter()
                run_sampler(diffusion, cond, noise, settings)
                _sync(device)
                totals[f"seconds_{label}"] = round(time.perf_counter() - start, 3)
            else:
                totals[f"seconds_{label}_projected"] = round(per_eval * steps, 2)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {
        **case,
        "grid_xyz": list(grid),
        "timesteps": diffusion.num_timesteps,
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "seconds_per_eval": round(per_eval, 4),
        **totals,
        "peak_memory_gib": round(peak, 2),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss",
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="demo,wholehead")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--variants", default="eager", help="eager,official-structure,channels-last")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--evals", type=int, default=3, help="timed network evaluations per case")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--full", action="store_true", help="run the full samplers instead of projecting totals")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    results = []
    for model in args.models.split(","):
        for variant in args.variants.split(","):
            for precision in args.precisions.split(","):
                if variant != "eager" and precision != "fp32":
                    continue  # structure comparisons are made in the exact fp32 mode
                case = dict(model=model, device=args.device, precision=precision, variant=variant, batch=args.batch,
                            evals=args.evals, warmup=args.warmup, full=args.full)
                child = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)],
                                       capture_output=True, text=True)
                if child.returncode != 0:
                    line = {**case, "error": child.stderr.strip().splitlines()[-1] if child.stderr.strip() else "failed"}
                else:
                    line = json.loads(child.stdout.strip().splitlines()[-1])
                baseline = next((r for r in results if r["model"] == model and r["variant"] == "eager"
                                 and r["precision"] == "fp32" and "error" not in r), None)
                if baseline and "error" not in line:
                    line["speedup_vs_fp32_eager"] = round(baseline["seconds_per_eval"] / line["seconds_per_eval"], 2)
                results.append(line)
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
