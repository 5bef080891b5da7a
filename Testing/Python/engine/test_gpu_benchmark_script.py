"""benchmarks/gpu_benchmark.sh cannot rot unnoticed: its --smoke mode runs every stage of the GPU run on the
CPU (tiny grids, the tiny random model) and must write the same kinds of JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "benchmarks" / "gpu_benchmark.sh"


def _run(*args, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env})


def test_smoke_mode_runs_every_stage(tmp_path):
    out = tmp_path / "results_gpu_smoke.jsonl"
    proc = _run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "failed" not in proc.stderr, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_bench = {}
    for line in lines:
        by_bench.setdefault(line.get("bench", "network"), []).append(line)

    assert by_bench["environment"][0]["torch"]
    parity = by_bench["cuda_cpu_parity"][0]
    assert parity["within_threshold"] and parity["max_abs_diff_step_t249"] == 0.0  # the CPU against itself

    network = {line["variant"]: line for line in by_bench["network"] if "dhw" in line}
    assert set(network) == {"ours", "reference"}
    assert all(line["seconds_per_eval"] > 0 and line["peak_gib"] > 0 for line in network.values())
    assert network["ours"]["max_abs_diff_vs_reference"] <= 1e-5  # the reference structure is the same function
    ratio = by_bench["ratio_ours_to_reference"][0]
    assert ratio["time_ratio"] > 0 and ratio["peak_ratio"] > 0

    sampling = [line for line in by_bench["network"] if "seconds_exact" in line]
    assert sampling and sampling[0]["steps_exact"] == 10 and sampling[0]["seconds_preview"] > 0

    dataset = by_bench["dataset"][0]
    assert dataset["cases"] == 1 and dataset["cases_per_hour"] > 0


def test_full_mode_refuses_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the full mode would run")
    proc = _run("--name", "nogpu", "--out", str(tmp_path / "r.jsonl"))
    assert proc.returncode == 1
    assert "no CUDA device" in proc.stderr and "--smoke" in proc.stderr
    assert not (tmp_path / "r.jsonl").exists()


def test_unknown_option_is_refused():
    proc = _run("--grids", "128")
    assert proc.returncode == 2 and "unknown option '--grids'" in proc.stderr
