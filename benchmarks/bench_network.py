#!/usr/bin/env python
"""One U-Net evaluation, ours against the official layer structure: time, peak memory, equality.

Each case runs in a fresh subprocess (clean peak memory) with random weights (seed 0) loaded into both
networks from the same state dict: ``ours`` is :class:`MedDDPMSynthLib.model.unet.UNet3D`, ``reference`` is
``benchmarks/reference_unet.py`` (the official structure, written from the reference notes). One JSON line
per case: seconds per evaluation (median), peak memory (CUDA max allocated; CPU peak RSS, and the growth
of the peak over the RSS before the first evaluation, i.e. the activations), and - in the ``ours`` case,
for grids up to ``--parity-max`` voxels - the max |difference| to the reference's output on the same input.
The ratio lines (``"ratio": ...``) divide ours by the reference, measured in the same run.

``--profile`` instead lists, per layer, the convolutions that run in ATen's ``slow_conv3d_forward``
(im2col + GEMM) rather than oneDNN (mkldnn), with their input shapes.

  python benchmarks/bench_network.py --grids demo,64,128 --variants ours,ours-aten,reference \\
      --precisions fp32,bf16 --evals 1 --warmup 0 --paired-rounds 5        # -> results_network_cpu.jsonl
  python benchmarks/bench_network.py --grids demo,64 --profile --variants ours-aten,ours
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

WHOLE_HEAD = dict(in_channels=3, out_channels=1, model_channels=64, channel_mult=(1, 1, 2, 3, 4),
                  num_res_blocks=1, attention_ds=(8,))
BRATS = dict(in_channels=8, out_channels=4, model_channels=64, channel_mult=(1, 1, 2, 3, 4),
             num_res_blocks=2, attention_ds=())
DEMO = dict(in_channels=3, out_channels=1, model_channels=32, channel_mult=(1, 2, 2, 4),
            num_res_blocks=1, attention_ds=(8,))
GRIDS = {
    # name: (config, (D, H, W) of the model tensor); the demo's X,Y,Z = 48,64,48 -> D,H,W = 48,64,48
    "demo": (DEMO, (48, 64, 48)),
    "64": (WHOLE_HEAD, (64, 64, 64)),
    "96": (WHOLE_HEAD, (96, 96, 96)),
    "128": (WHOLE_HEAD, (128, 128, 128)),
    "brats": (BRATS, (144, 192, 192)),
    "smoke": (dict(WHOLE_HEAD, model_channels=32, channel_mult=(1, 1, 2)), (16, 16, 16)),
}


def _rss_gib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**30


def build(grid: str, variant: str, device: torch.device):
    """(network in eval mode, config) with the seed-0 weights of our network, for either variant."""
    from MedDDPMSynthLib.model.unet import UNet3D, UNetConfig
    from reference_unet import ReferenceUNet

    import MedDDPMSynthLib.model.unet as unet

    config, _ = GRIDS[grid]
    if variant == "ours-aten":  # our network with ATen's own kernel choice (slow_conv3d_forward for small inputs)
        unet._ONEDNN = False
    torch.manual_seed(0)
    ours = UNet3D(UNetConfig(**config))
    if variant.startswith("ours"):
        ours = ours.to(device).eval()
        if variant == "ours-channels-last":
            ours = ours.to(memory_format=torch.channels_last_3d)
        if variant == "ours-compile":
            ours = torch.compile(ours)
        return ours, config
    reference = ReferenceUNet(**config)
    reference.load_state_dict(ours.state_dict(), strict=True)
    return reference.to(device).eval(), config


def inputs(grid: str, batch: int, device: torch.device):
    config, dhw = GRIDS[grid]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, config["in_channels"], *dhw, generator=g).to(device)
    return x, torch.full((batch,), 200, dtype=torch.long, device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_case(case: dict) -> dict:
    device = torch.device(case["device"])
    net, config = build(case["grid"], case["variant"], device)
    x, t = inputs(case["grid"], case["batch"], device)
    if case["variant"] == "ours-channels-last":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[case["precision"]]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        torch.cuda.reset_peak_memory_stats()
    before = _rss_gib()
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        call = lambda: net(x, t)  # noqa: E731
        if case["variant"] == "ours-cudagraph":  # one evaluation captured once, then replayed
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    net(x, t)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = net(x, t)
            call = lambda: (graph.replay(), static_out)[1]  # noqa: E731
        for i in range(case["warmup"] + case["evals"]):
            _sync(device)
            start = time.perf_counter()
            out = call()
            _sync(device)
            if i >= case["warmup"]:
                times.append(time.perf_counter() - start)
            del out
    line = {**case, "dhw": list(GRIDS[case["grid"]][1]), "config": config, "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "seconds_per_eval": round(statistics.median(times), 4), "seconds_all": [round(s, 4) for s in times]}
    if device.type == "cuda":
        line["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        line["peak_kind"] = "cuda_max_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        line.update(peak_gib=round(peak, 3), peak_kind="cpu_peak_rss", rss_before_gib=round(before, 3),
                    activation_peak_gib=round(peak - before, 3))
    voxels = x.shape[0] * x[0, 0].numel()
    if case["variant"].startswith("ours") and dtype is None and voxels <= case["parity_max"]:
        reference, _ = build(case["grid"], "reference", device)
        with torch.no_grad():
            line["max_abs_diff_vs_reference"] = float((net(x, t) - reference(x, t)).abs().max())
    line["torch"] = torch.__version__
    return line


def run_paired(case: dict) -> dict:
    """Seconds per evaluation of several variants in one process, interleaved round by round (the order
    rotating), so that all of them see the same machine load: on a shared CPU, separate runs minutes apart
    differ by far more than the variants do. The ratios are medians of the per-round ratios."""
    import MedDDPMSynthLib.model.unet as unet

    device = torch.device(case["device"])
    specs = case["specs"]  # ["ours:fp32", "reference:fp32", "ours-aten:fp32", "ours:bf16", ...]
    nets = {}
    for spec in specs:
        variant = spec.split(":")[0]
        key = "reference" if variant == "reference" else "ours"  # ours-aten: the same network, ATen's kernels
        if key not in nets:
            nets[key] = build(case["grid"], key, device)[0]
    unet._ONEDNN = torch.backends.mkldnn.is_available()
    default = unet._ONEDNN
    x, t = inputs(case["grid"], case["batch"], device)
    times = {spec: [] for spec in specs}
    with torch.no_grad():
        for r in range(case["warmup"] + case["evals"]):
            order = specs[r % len(specs):] + specs[:r % len(specs)]
            for spec in order:
                variant, precision = spec.split(":")
                unet._ONEDNN = default and variant != "ours-aten"
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    _sync(device)
                    start = time.perf_counter()
                    nets["reference" if variant == "reference" else "ours"](x, t)
                    _sync(device)
                if r >= case["warmup"]:
                    times[spec].append(time.perf_counter() - start)
    unet._ONEDNN = default
    line = {"bench": "paired_timing", "grid": case["grid"], "dhw": list(GRIDS[case["grid"]][1]), "batch": case["batch"],
            "device": case["device"], "threads": torch.get_num_threads(), "rounds": case["evals"],
            "seconds_per_eval": {k: round(statistics.median(v), 4) for k, v in times.items()},
            "seconds_all": {k: [round(s, 3) for s in v] for k, v in times.items()}}
    base = "reference:fp32" if "reference:fp32" in times else None
    if base:
        line["ratio_to_reference"] = {
            k: round(statistics.median(a / b for a, b in zip(v, times[base])), 3) for k, v in times.items() if k != base}
    if "ours:bf16" in times and "ours:fp32" in times:
        line["bf16_speedup"] = round(statistics.median(a / b for a, b in zip(times["ours:fp32"], times["ours:bf16"])), 3)
    line["torch"] = torch.__version__
    return line


def profile_slow_convs(case: dict) -> dict:
    """Which convolutions fall to slow_conv3d_forward, by layer name, with their input shapes."""
    from torch.profiler import ProfilerActivity, profile, record_function

    device = torch.device(case["device"])
    net, _ = build(case["grid"], case["variant"], device)
    x, t = inputs(case["grid"], case["batch"], device)
    ranges = {}
    for name, module in net.named_modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Conv1d)):
            module.register_forward_pre_hook(lambda m, a, n=name: ranges.setdefault(n, []).append(
                record_function(f"layer:{n}").__enter__()))
            module.register_forward_hook(lambda m, a, o, n=name: ranges[n].pop().__exit__(None, None, None))
    with torch.no_grad():
        net(x, t)  # warm-up
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            net(x, t)
    slow, kernels = [], {}
    total_conv_us = 0.0
    for event in prof.events():
        if not event.name.startswith("layer:"):
            continue
        children = [c.name for c in event.cpu_children]
        stack = list(event.cpu_children)
        names, shape = set(), None
        while stack:
            child = stack.pop()
            names.add(child.name)
            if child.name == "aten::slow_conv3d_forward":
                shape = child.input_shapes[0] if child.input_shapes else None
            stack.extend(child.cpu_children)
        kernel = next((k for k in ("aten::slow_conv3d_forward", "aten::mkldnn_convolution", "aten::_convolution")
                       if k in names), children[0] if children else "?")
        kernels[kernel] = kernels.get(kernel, 0) + 1
        total_conv_us += event.cpu_time_total
        if "aten::slow_conv3d_forward" in names:
            module = net.get_submodule(event.name[len("layer:"):])
            slow.append({"layer": event.name[len("layer:"):], "input_shape": shape, "kernel": list(module.weight.shape[2:]), "stride": list(module.stride),
                         "ms": round(event.cpu_time_total / 1000, 2)})
    slow_ms = sum(s["ms"] for s in slow)
    return {"bench": "slow_conv3d_profile", "grid": case["grid"], "variant": case["variant"], "batch": case["batch"],
            "threads": torch.get_num_threads(), "conv_calls_by_kernel": kernels, "slow_calls": len(slow),
            "slow_ms": round(slow_ms, 1), "all_conv_ms": round(total_conv_us / 1000, 1), "slow_layers": slow,
            "torch": torch.__version__}


def cuda_cpu_parity(case: dict) -> dict:
    """One evaluation and one official DDPM step on the GPU (fp32, TF32 off) against the CPU, same input."""
    from MedDDPMSynthLib import GaussianDiffusion, UNetConfig
    from MedDDPMSynthLib.model.sampling import ddpm_step, exact_math

    config, dhw = GRIDS[case["grid"]]
    net, _ = build(case["grid"], "ours", torch.device("cpu"))
    diffusion = GaussianDiffusion(UNetConfig(**config), timesteps=250)
    diffusion.denoise_fn.load_state_dict(net.state_dict())
    diffusion.eval()
    g = torch.Generator().manual_seed(2)
    c_img = config["out_channels"]
    x = torch.randn(1, c_img, *dhw, generator=g)
    cond = torch.randn(1, config["in_channels"] - c_img, *dhw, generator=g).sign()
    z = torch.randn(1, c_img, *dhw, generator=g)
    line = {"bench": "cuda_cpu_parity", "grid": case["grid"], "dhw": list(dhw), "threshold": 1e-4}
    with torch.no_grad(), exact_math(True):
        for t in case["steps"]:
            tt = torch.full((1,), t, dtype=torch.long)
            eps_cpu, step_cpu = diffusion.predict_eps(x, cond, tt), ddpm_step(diffusion, x, cond, t, z)
            gpu = diffusion.to(case["device"])
            dev = [v.to(case["device"]) for v in (x, cond, tt, z)]
            eps_gpu = gpu.predict_eps(dev[0], dev[1], dev[2]).cpu()
            step_gpu = ddpm_step(gpu, dev[0], dev[1], t, dev[3]).cpu()
            diffusion = gpu.cpu()
            line[f"max_abs_diff_eps_t{t}"] = float((eps_gpu - eps_cpu).abs().max())
            line[f"max_abs_diff_step_t{t}"] = float((step_gpu - step_cpu).abs().max())
    line["device_name"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    line["within_threshold"] = all(v <= 1e-4 for k, v in line.items() if k.startswith("max_abs_diff"))
    return line


def _child(case: dict) -> dict:
    # a fixed malloc mmap threshold: every tensor-sized block is mapped on allocation and unmapped on free, so
    # the peak RSS follows the live tensors instead of glibc's heap high-water mark
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    child = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True,
                           env=env)
    if child.returncode != 0:
        tail = child.stderr.strip().splitlines()
        return {**case, "error": tail[-1] if tail else f"exit {child.returncode}"}
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--grids", default="demo,64,128", help=f"comma list of {','.join(GRIDS)}")
    parser.add_argument("--variants", default="ours,reference",
                        help="ours, reference (official structure), ours-aten (ours with ATen's convolution choice), "
                        "ours-channels-last, ours-compile, ours-cudagraph (CUDA only)")
    parser.add_argument("--precisions", default="fp32", help="fp32,bf16 (bf16: our variants only)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--evals", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--paired-rounds", type=int, default=0,
                        help="also time the variants interleaved in one process for this many rounds (CPU: "
                        "use this for ratios on a shared machine)")
    parser.add_argument("--paired-warmup", type=int, default=1, help="untimed rounds before --paired-rounds")
    parser.add_argument("--parity-max", type=int, default=64**3, help="largest grid (voxels) checked for equality")
    parser.add_argument("--profile", action="store_true", help="list the convolutions that run slow_conv3d_forward")
    parser.add_argument("--cuda-cpu-parity", action="store_true",
                        help="one evaluation and one DDPM step (t=249 and t=10) on --device against the CPU")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case in this process
    args = parser.parse_args()
    if args.case:
        case = json.loads(args.case)
        run = (profile_slow_convs if case.get("profile") else cuda_cpu_parity if case.get("parity")
               else run_paired if case.get("specs") else run_case)
        print(json.dumps(run(case)))
        return
    sink = open(args.out, "a") if args.out else None
    for grid in args.grids.split(","):
        rows = {}
        cases = ([dict(grid=grid, device=args.device, parity=True, steps=[249, 10])] if args.cuda_cpu_parity else
                 [dict(grid=grid, variant=v, device=args.device, batch=args.batch, profile=True)
                  for v in args.variants.split(",") if v != "reference"] if args.profile else
                 [dict(grid=grid, variant=v, precision=p, device=args.device, batch=args.batch, evals=args.evals,
                       warmup=args.warmup, parity_max=args.parity_max)
                  for p in args.precisions.split(",") for v in args.variants.split(",")
                  if p == "fp32" or (v.startswith("ours") and v != "ours-aten")])
        lines = []
        for case in cases:
            line = _child(case)
            lines.append(line)
            if "error" not in line and "variant" in line and "precision" in line:
                rows[(line["variant"], line["precision"])] = line
        paired = None
        if args.paired_rounds and not args.profile and not args.cuda_cpu_parity:
            specs = [f"{v}:{p}" for p in args.precisions.split(",") for v in args.variants.split(",")
                     if (p == "fp32" or v == "ours") and v in ("ours", "ours-aten", "reference")]
            paired = _child(dict(grid=grid, device=args.device, batch=args.batch, specs=specs,
                                 evals=args.paired_rounds, warmup=args.paired_warmup))
            lines.append(paired)
        ours, ref = rows.get(("ours", "fp32")), rows.get(("reference", "fp32"))
        if ours and ref:
            ratio = {"bench": "ratio_ours_to_reference", "grid": grid, "batch": args.batch, "device": args.device,
                     "time_ratio": round(ours["seconds_per_eval"] / ref["seconds_per_eval"], 3),
                     "peak_ratio": round(ours["peak_gib"] / ref["peak_gib"], 3)}
            if paired and "ratio_to_reference" in paired:  # the load-robust number, when measured
                ratio["time_ratio_separate_runs"] = ratio["time_ratio"]
                ratio["time_ratio"] = paired["ratio_to_reference"]["ours:fp32"]
            if "activation_peak_gib" in ours:
                ratio["activation_peak_ratio"] = round(ours["activation_peak_gib"] / ref["activation_peak_gib"], 3)
            lines.append(ratio)
        bf16 = rows.get(("ours", "bf16"))
        if ours and bf16:
            speedup = {"bench": "bf16_speedup", "grid": grid, "device": args.device,
                       "speedup": round(ours["seconds_per_eval"] / bf16["seconds_per_eval"], 3)}
            if paired and "bf16_speedup" in paired:  # interleaved rounds: the load-robust number
                speedup["speedup_separate_runs"], speedup["speedup"] = speedup["speedup"], paired["bf16_speedup"]
            lines.append(speedup)
        for line in lines:
            text = json.dumps(line)
            print(text, flush=True)
            if sink:
                sink.write(text + "\n")
                sink.flush()


if __name__ == "__main__":
    main()
