#!/usr/bin/env python
"""Wall time of the README's main command, end to end, for each sampler variant; one JSON line each.

Each variant runs ``medddpm-synth generate --mask <example mask> --model demo -o <tmp> --device cpu`` plus its
own flags as a fresh process (so import, model load, resampling, sampling and writing all count), the
variants interleaved ``--repeats`` times; the lines give the median and every run, and the ratio of each
variant's median to the first variant's (the built-in preview, ``dpm++3m`` 10 quadratic bf16, the demo's default
until its file recommended its own),
measured in the same run: the machine may be shared, so compare ratios. A last line splits one default
run into stages measured in-process (import, model load, mask preparation, then the file workflow:
sampling, from the spacing of its progress reports, and everything else: resampling, writing, preview PNG).

  OMP_NUM_THREADS=2 python benchmarks/bench_preview.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MASK = REPO / "MedDDPMSynth" / "Resources" / "Examples" / "demo_mask.nii.gz"
VARIANTS = {
    "built-in preview (dpm++3m 10 quadratic bf16)": ["--sampler", "dpm++3m", "--steps", "10", "--step-spacing",
                                                     "quadratic", "--precision", "bf16"],
    "default (no sampler flags: the model's own preview)": [],
}


def _run(flags: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "MedDDPMSynthLib", "generate", "--mask", str(MASK), "--model", "demo",
                   "-o", str(Path(tmp) / "demo"), "--device", "cpu", "--quiet", *flags]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - start


def _stages() -> dict:
    """One default run split into its stages, in a fresh process (so the import is measured too)."""
    code = """
import json, sys, time, tempfile
from pathlib import Path
t0 = time.perf_counter()
import MedDDPMSynthLib.cli.commands
from MedDDPMSynthLib.store.models import load_named_model
from MedDDPMSynthLib.workflows.pipeline import GenerateRequest, generate_files, prepare_labels
from MedDDPMSynthLib.model.presets import choose_sampler
t1 = time.perf_counter()
model = load_named_model("demo", device="cpu")
t2 = time.perf_counter()
settings = choose_sampler(model.device, model.timesteps, metadata=model.info.metadata).settings
_, labels, _, _ = prepare_labels(GenerateRequest(mask=Path(sys.argv[1]), output=Path("unused")), model)
t3 = time.perf_counter()
steps = []  # time of each progress report: evaluation k ends at steps[k-1]
with tempfile.TemporaryDirectory() as tmp:
    generate_files(GenerateRequest(mask=Path(sys.argv[1]), output=Path(tmp) / "o", sampler=settings), model,
                   progress=lambda done, total: steps.append(time.perf_counter()))
t5 = time.perf_counter()
n = len(steps)
sampling = (steps[-1] - steps[0]) * n / (n - 1)  # n evaluations, from the spacing of the reports
print(json.dumps({"import_s": t1 - t0, "model_load_s": t2 - t1, "mask_to_model_grid_s": t3 - t2,
                  "generate_files_s": t5 - t3, "sampling_s": sampling, "seconds_per_evaluation": sampling / n,
                  "generate_files_outside_sampling_s": (t5 - t3) - sampling,
                  "settings": [settings.name, settings.steps, settings.spacing, settings.precision]}))
"""
    out = subprocess.run([sys.executable, "-c", code, str(MASK)], check=True, capture_output=True, text=True)
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in json.loads(out.stdout).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from VARIANTS")
    parser.add_argument("--no-stages", action="store_true")
    args = parser.parse_args()
    names = args.variants.split(",")
    times: dict[str, list[float]] = {n: [] for n in names}
    for repeat in range(args.repeats):  # interleaved: a burst of load hits every variant alike
        for name in names:
            times[name].append(_run(VARIANTS[name]))
            print(json.dumps({"run": repeat, "variant": name, "seconds": round(times[name][-1], 2)}), flush=True)
    base = statistics.median(times[names[0]])
    import torch

    for name in names:
        median = statistics.median(times[name])
        print(json.dumps({"variant": name, "flags": VARIANTS[name], "median_s": round(median, 2),
                          "runs_s": [round(t, 2) for t in times[name]], "ratio_to_first": round(median / base, 3),
                          "threads": torch.get_num_threads()}), flush=True)
    if not args.no_stages:
        print(json.dumps({"stages_of_default_run": _stages()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
