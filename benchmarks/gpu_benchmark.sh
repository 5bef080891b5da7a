#!/usr/bin/env bash
# The GPU benchmark, one prepared run (benchmarks/README.md, section "GPU"): the official whole-head (128^3)
# and BraTS (192x192x144) configurations with random weights - CUDA vs CPU parity of one step, per-evaluation
# time and peak memory (ours vs the official structure; fp32 exact with TF32 off, bf16, channels-last, CUDA
# graphs, torch.compile; batch 1/4/8), the exact 250-step sampler and the 25-step preview end to end, and
# the dataset command's cases per hour. Every stage appends JSON lines to the results file as it ends, so a
# run cut short keeps what it measured.
#
#   benchmarks/gpu_benchmark.sh --fetch-wheels      # where pip reaches an index: wheels the GPU image lacks -> .whl/
#   benchmarks/gpu_benchmark.sh --name h200         # on the GPU machine -> benchmarks/results_gpu_h200.jsonl
#   benchmarks/gpu_benchmark.sh --smoke --out F     # the same stages on the CPU, tiny grids, seconds (the test)
#
# The engine runs from the source tree (PYTHONPATH), so the GPU machine's own CUDA build of torch is used.
# PYTHON selects the interpreter (default python3).
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
MODE=full NAME="" OUTFILE="" FETCH=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) MODE=smoke ;;
    --fetch-wheels) FETCH=1 ;;
    --name) NAME="${2:?--name needs a value, e.g. --name h200}"; shift ;;
    --out) OUTFILE="${2:?--out needs a file path}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_benchmark.sh: unknown option '$1'; see --help" >&2; exit 2 ;;
  esac
  shift
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WHEELS="$REPO/.whl"
# the engine's dependencies that the GPU image (torch, numpy, safetensors, tqdm, pillow) does not hold
NEEDED=(SimpleITK==2.5.7 nibabel==5.4.2 platformdirs==4.14.9)

if [[ $FETCH == 1 ]]; then
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" "${NEEDED[@]}"
  exit 0
fi

if ! "$PY" -c "import SimpleITK, nibabel, platformdirs" 2>/dev/null; then
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/medddpm_site \
      "$WHEELS"/*.whl
  else
    "$PY" -m pip install -q --no-deps --target /tmp/medddpm_site "${NEEDED[@]}"
  fi
  export PYTHONPATH="/tmp/medddpm_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO/MedDDPMSynth${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [[ $MODE == smoke ]]; then
  DEVICE=cpu
  NAME="${NAME:-smoke}"
  # the tiny random official-format model stands in for "demo" (32^3 grid of 6 mm, 10 steps), exported with
  # that grid inside the file as the bundled demo model carries its own
  SMOKE_MODEL="$(mktemp -d)/tiny_random_test_model.safetensors"
  "$PY" -m MedDDPMSynthLib models export "$REPO/Testing/Data/official/tiny_wholehead_ckpt.pt" -o "$SMOKE_MODEL" \
    --dtype fp32 --grid 32,32,32 --spacing 6,6,6 >/dev/null
  export MEDDDPMSYNTH_DEMO_MODEL="$SMOKE_MODEL"
else
  DEVICE=cuda
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_benchmark.sh: torch sees no CUDA device here; run it on the GPU machine, or use --smoke" >&2; exit 1; }
  NAME="${NAME:-$("$PY" -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")}"
fi
OUTFILE="${OUTFILE:-$REPO/benchmarks/results_gpu_${NAME}.jsonl}"
mkdir -p "$(dirname "$OUTFILE")"
: > "$OUTFILE"

stage() {  # stage TITLE COMMAND...: JSON lines to the results file (copied to $OUT when the device tool runs it)
  local title="$1"; shift
  echo "== $title" >&2
  local started=$SECONDS
  "$@" | grep '^{' >> "$OUTFILE" || echo "gpu_benchmark.sh: stage '$title' failed (exit ${PIPESTATUS[0]})" >&2
  echo "   $((SECONDS - started)) s" >&2
  if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then cp "$OUTFILE" "$OUT/"; fi
}

NET=("$PY" "$REPO/benchmarks/bench_network.py" --device "$DEVICE")
stage environment "$PY" -c "import json, platform, torch
cuda = torch.cuda.is_available()
print(json.dumps({'bench': 'environment', 'device': torch.cuda.get_device_name() if cuda else 'cpu',
                  'torch': torch.__version__, 'cuda': torch.version.cuda, 'python': platform.python_version(),
                  'gpu_memory_gib': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None}))"

if [[ $MODE == smoke ]]; then
  stage "parity (CPU against itself)" "${NET[@]}" --grids smoke --cuda-cpu-parity
  stage "network" "${NET[@]}" --grids smoke --variants ours,reference --evals 1 --warmup 0
  stage "samplers" "$PY" "$REPO/benchmarks/bench_sampling.py" --device cpu --models demo --precisions fp32 \
    --evals 1 --warmup 0 --full
  stage "dataset" "$PY" "$REPO/benchmarks/bench_dataset.py" --device cpu --masks 1 --samples-per-mask 1 \
    --grid 32,32,32 --spacing 6 --steps 2
else
  stage "parity CUDA vs CPU, 128^3 fp32" "${NET[@]}" --grids 128 --cuda-cpu-parity
  stage "network, batch 1" "${NET[@]}" --grids 128,brats --variants ours,reference,ours-channels-last,ours-cudagraph \
    --precisions fp32,bf16 --evals 10 --warmup 3 --parity-max 0
  for batch in 4 8; do
    stage "network, batch $batch" "${NET[@]}" --grids 128,brats --variants ours --precisions fp32,bf16 \
      --batch "$batch" --evals 5 --warmup 2 --parity-max 0
  done
  stage "torch.compile (first call = compile)" "${NET[@]}" --grids 128 --variants ours-compile \
    --precisions bf16,fp32 --evals 10 --warmup 2 --parity-max 0
  stage "exact 250 steps and 25-step preview" "$PY" "$REPO/benchmarks/bench_sampling.py" --device cuda \
    --models wholehead,brats --precisions fp32,bf16 --evals 3 --full
  stage "dataset, preview bf16" "$PY" "$REPO/benchmarks/bench_dataset.py" --device cuda --random wholehead \
    --masks 4 --samples-per-mask 2 --sampler dpm++ --steps 25 --precision bf16 --batch 2
  stage "dataset, exact fp32" "$PY" "$REPO/benchmarks/bench_dataset.py" --device cuda --random wholehead \
    --masks 2 --samples-per-mask 1 --sampler ddpm --steps 250 --precision fp32 --batch 1
fi
echo "wrote $(wc -l < "$OUTFILE") JSON lines to $OUTFILE" >&2
