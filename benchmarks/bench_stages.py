#!/usr/bin/env python
"""Where a user's wait goes: the README's main command, stage by stage, one JSON line per run.

Runs ``medddpm-synth generate`` (default: the README's main command) inside this process with a timer
around each stage - model load, reading/checking the mask and resampling it to the model grid, the
sampler (network evaluations), resampling each image back to the mask's grid, writing the NIfTI files,
the preview PNG (render + write), the rest (mask copy, provenance, commit) - and, in fresh interpreters,
the import time of torch and of the command-line module, and the whole command's wall time as a user
sees it. The wrappers only time the engine's own functions; the command's behaviour is unchanged.

  python benchmarks/bench_stages.py --runs 3      # -> results_stages_cpu.jsonl
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAIN = ["generate", "--mask", str(REPO / "MedDDPMSynth/Resources/Examples/demo_mask.nii.gz"), "--model", "demo",
        "--sampler", "dpm++", "--steps", "25"]


def _fresh(code: str) -> float:
    """Seconds a fresh interpreter spends on ``code`` (printed by itself)."""
    out = subprocess.run([sys.executable, "-c", f"import time; t = time.perf_counter(); {code}; "
                          "print(time.perf_counter() - t)"], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _timed(owner, name: str, totals: dict, key) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            label = key(args) if callable(key) else key
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - started
    setattr(owner, name, wrapper)


def in_process(argv: list[str]) -> dict:
    """Stage seconds of one run of the command inside this (already importing) process."""
    from MedDDPMSynthLib.model import api
    from MedDDPMSynthLib.cli import commands as cli
    from MedDDPMSynthLib.cli import generate as cli_generate
    from MedDDPMSynthLib.domain import geometry
    from MedDDPMSynthLib.io import outputs
    from MedDDPMSynthLib.workflows import pipeline

    totals: dict[str, float] = {}
    _timed(cli_generate, "load_named_model", totals, "model_load")
    _timed(pipeline, "prepare_labels", totals, "read_mask_and_resample_to_model_grid")
    _timed(api.SynthesisModel, "generate", totals, "sampling")
    _timed(geometry.GridMapping, "image_to_input", totals, "resample_back_to_mask_grid")
    _timed(outputs.StagedOutput, "write_image", totals,
           lambda a: "write_preview_png" if str(a[2]).endswith(".png") else "write_nifti")
    _timed(pipeline, "preview_png", totals, "render_preview_png")
    started = time.perf_counter()
    code = cli.main(argv)
    total = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"the command failed (exit {code})")
    totals["write_nifti"] = totals.get("write_nifti", 0.0)
    stages = {k: round(v, 3) for k, v in totals.items()}
    stages["other"] = round(total - sum(totals.values()), 3)
    return {"in_process_total": round(total, 3), **stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--args", help="the generate arguments instead of the README's main command (no -o)")
    parser.add_argument("--stage-run", help=argparse.SUPPRESS)  # internal: one in-process run
    args = parser.parse_args()
    argv = args.args.split() if args.args else MAIN
    if args.stage_run:
        print(json.dumps(in_process(json.loads(args.stage_run))))
        return
    import torch

    rows = []
    for run in range(args.runs):
        out = Path(tempfile.mkdtemp(prefix="bench_stages_"))
        try:
            row = {"run": run, "import_torch": round(_fresh("import torch"), 3),
                   "import_cli": round(_fresh("import MedDDPMSynthLib.cli.commands"), 3)}
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "MedDDPMSynthLib", *argv, "-o", str(out / "cli"), "--quiet"],
                           check=True, capture_output=True)
            row["command_wall"] = round(time.perf_counter() - started, 3)
            child = subprocess.run([sys.executable, __file__, "--stage-run", json.dumps([*argv, "-o", str(out / "s"), "--quiet"])],
                                   check=True, capture_output=True, text=True)
            row.update(json.loads(child.stdout.strip().splitlines()[-1]))
        finally:
            shutil.rmtree(out, ignore_errors=True)
        rows.append(row)
        print(json.dumps({"bench": "stages", "command": "medddpm-synth " + " ".join(argv).replace(str(REPO) + "/", ""),
                          "threads": torch.get_num_threads(), **row}), flush=True)
    keys = [k for k in rows[0] if k != "run"]
    print(json.dumps({"bench": "stages_median", "runs": len(rows), "threads": torch.get_num_threads(),
                      **{k: round(statistics.median(r.get(k, 0.0) for r in rows), 3) for k in keys}}), flush=True)


if __name__ == "__main__":
    main()
