#!/usr/bin/env python
"""One evaluation of the demo network in fp32 and bf16 autocast, with oneDNN's native instruction set and with
it capped at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``: what a laptop CPU without AVX-512 gives), each in a fresh
process (oneDNN reads the cap when it starts). One JSON line per case: seconds of the second evaluation (the
first warms up), or ``stopped_after_s`` when a case passes ``--limit``, and whether oneDNN called bf16 native
(``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, what the preview preset asks before choosing bf16).

  OMP_NUM_THREADS=1 python benchmarks/bench_cpu_isa.py --limit 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASE = """
import json, sys, time, torch
from MedDDPMSynthLib.store.models import load_named_model
diffusion = load_named_model("demo").diffusion
x, c, t = torch.randn(1, 1, 48, 64, 48), torch.randn(1, 2, 48, 64, 48), torch.tensor([100])
bf16 = sys.argv[1] == "bf16"
seconds = []
for _ in range(2):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        start = time.perf_counter()
        diffusion.predict_eps(x, c, t)
        seconds.append(time.perf_counter() - start)
print(json.dumps({"seconds": round(seconds[-1], 3), "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=float, default=300.0, help="seconds one case may take (default 300)")
    args = parser.parse_args()
    for isa in ("native", "AVX2"):
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        if isa != "native":
            env["ONEDNN_MAX_CPU_ISA"] = isa
        for precision in ("fp32", "bf16"):
            row = {"onednn_isa": isa, "precision": precision, "threads": env.get("OMP_NUM_THREADS", "default")}
            start = time.perf_counter()
            try:
                done = subprocess.run([sys.executable, "-c", CASE, precision], env=env, capture_output=True, text=True,
                                      timeout=args.limit, check=True)
                row.update(json.loads(done.stdout.strip().splitlines()[-1]))
            except subprocess.TimeoutExpired:
                row["stopped_after_s"] = round(time.perf_counter() - start, 1)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
