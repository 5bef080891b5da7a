#!/usr/bin/env bash
# How the bundled demo model and its card's figures and numbers were made: every step is a medddpm-synth
# command (plus the loss-curve plot). Run from the repository root with the package installed
# (pip install -e ".[test]"); WORK holds the data and the training runs.
# Two phases: STEPS optimiser steps with the official objective (run/), then fine-tuning from that
# checkpoint to step TUNE_STEPS with truncated-SNR loss weighting (run2/), which taught the network to take
# the background and tissue levels from the mask instead of from the noisy image (see the model card).
#   WORK=/tmp/demo bash MedDDPMSynth/Resources/Models/make_demo_model.sh                         # all of it
#   RESUME=1 TUNE_STEPS=12000 WORK=/tmp/demo bash MedDDPMSynth/Resources/Models/make_demo_model.sh # phase 2 on from its last checkpoint
#   SKIP_TRAINING=1 WORK=/tmp/demo bash MedDDPMSynth/Resources/Models/make_demo_model.sh         # export + card only
#   ... MODEL=/tmp/demo/run2/model-7500.pt ...   export that checkpoint instead of run2's last
set -euo pipefail
WORK=${WORK:-demo-work}
STEPS=${STEPS:-6000}
TUNE_STEPS=${TUNE_STEPS:-6250}
MODEL=${MODEL:-$WORK/run2/model-last.pt}
GRID=48,64,48
SPACING=3.5,3.5,3.5
OUT=MedDDPMSynth/Resources/Models

if [ -z "${SKIP_TRAINING:-}" ]; then
  if [ -z "${RESUME:-}" ]; then
    medddpm-synth demo-data -o "$WORK/data" --cases 500 --seed 2026 --grid $GRID --spacing $SPACING
    # one OpenMP thread: steady on a shared 2-core machine (two threads thrash when another process runs)
    OMP_NUM_THREADS=1 medddpm-synth train --masks "$WORK/data/masks" --images "$WORK/data/images" -o "$WORK/run" \
      --grid $GRID --spacing $SPACING --channels 32 --mult 1,2,2,4 --res-blocks 1 --attention 8 --timesteps 250 \
      --steps "$STEPS" --batch 1 --accum 1 --lr 1e-4 --ema-start 1000 --ema-every 1 --ema-decay 0.998 \
      --precision bf16 --seed 0 --save-every 250 --log-every 10 --device cpu
  fi
  # phase 2 keeps phase 1's settings (read from its checkpoint's sidecar) but the loss weighting
  OMP_NUM_THREADS=1 medddpm-synth train --masks "$WORK/data/masks" --images "$WORK/data/images" -o "$WORK/run2" \
    --steps "$TUNE_STEPS" --weighting truncated-snr --save-every 250 --log-every 10 --device cpu \
    --resume "$([ -n "${RESUME:-}" ] && echo "$WORK/run2/model-last.pt" || echo "$WORK/run/model-$STEPS.pt")"
fi

medddpm-synth models export "$MODEL" -o "$OUT/demo_model.safetensors" --dtype fp16 --overwrite

# held-out cases (another seed than the training data): two samples each, then the card's metrics and montage
medddpm-synth demo-data -o "$WORK/heldout" --cases 6 --seed 7 --grid $GRID --spacing $SPACING --quiet
rm -rf "$WORK/generated" && mkdir -p "$WORK/generated"
for mask in "$WORK"/heldout/masks/case_*.nii.gz; do
  case=$(basename "$mask" .nii.gz)
  for seed in 0 1; do
    MEDDDPMSYNTH_DEMO_MODEL= medddpm-synth generate --mask "$mask" --model demo --sampler dpm++ --steps 25 \
      --seed $seed -o "$WORK/generated/${case}_s${seed}.nii.gz" --quiet
  done
done
medddpm-synth evaluate --generated "$WORK/generated" --reference "$WORK/heldout/images" --masks "$WORK/heldout/masks" \
  -o "$OUT/demo_model_eval.json" --montage "$OUT/demo_model_montage.png" --overwrite
# every run in WORK in name order (run, run2, run3...: a later one wins where steps overlap), up to the model
python benchmarks/plot_training_log.py "$WORK"/run*/train_log.csv --until "$MODEL" -o "$OUT/demo_model_loss.png"
# the card's machine-readable facts (checked by Testing/Python/test_demo_model.py)
MEDDDPMSYNTH_DEMO_MODEL= python - "$OUT/demo_model.json" "$MODEL" <<'PY'
import json, sys
import torch
from MedDDPMSynthLib.models import demo_entry
entry = demo_entry()
keep = ("file", "family", "grid_xyz", "spacing_mm", "timesteps", "config", "sha256", "size_bytes", "container", "step")
card = {k: entry[k] for k in keep}
card["steps_trained"] = int(torch.load(sys.argv[2], map_location="cpu", weights_only=True)["step"])
card["labels"] = {"0": "background", "1": "brain (the whole-head family's head label)", "2": "tumour"}
open(sys.argv[1], "w").write(json.dumps(card, indent=2) + "\n")
PY
