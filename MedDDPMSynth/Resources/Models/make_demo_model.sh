#!/usr/bin/env bash
# How the bundled demo model and its card's figures and numbers were made: every step is a medddpm-synth
# command (plus the loss-curve and realism scripts). Run from the repository root with the package installed
# (pip install -e ".[test,bench]"); WORK holds the data and the training runs.
#
# Phases 1-2 (history, this script at commit c9c076f, demo-data generator version 1): 6000 steps of the
# official objective (eps prediction, per-slice normalisation, uniform L1), then 250 steps of truncated-SNR
# fine-tuning: the eps model shipped until then, whose samples had a grey background, stripes along z and
# dark tumours (see the model card). Phase 3 (this script): fine-tune that network into a v-predicting model
# on robust whole-volume intensities, with demo-data generator version 2 (mostly bright enhancing tumours).
#   WORK=/tmp/demo bash MedDDPMSynth/Resources/Models/make_demo_model.sh                  # phase 3, export, card numbers
#   RESUME=1 STEPS=2000 WORK=/tmp/demo bash MedDDPMSynth/Resources/Models/make_demo_model.sh # phase 3 on from its last checkpoint
#   SKIP_TRAINING=1 WORK=/tmp/demo bash MedDDPMSynth/Resources/Models/make_demo_model.sh  # export + card only
#   ... MODEL=/tmp/demo/run3/model-900.pt ...   export that checkpoint instead of run3's last
set -euo pipefail
WORK=${WORK:-demo-work}
STEPS=${STEPS:-1500}
MODEL=${MODEL:-$WORK/run3/model-last.pt}
INIT=${INIT:-$WORK/phase2-model-6250.safetensors}
GRID=48,64,48
SPACING=3.5,3.5,3.5
OUT=MedDDPMSynth/Resources/Models

if [ -z "${SKIP_TRAINING:-}" ]; then
  if [ -z "${RESUME:-}" ]; then
    # the phase-2 network as it shipped (its EMA weights, fp16) is where phase 3 starts
    [ -f "$INIT" ] || { mkdir -p "$WORK" && git show c9c076f:Resources/Models/demo_model.safetensors > "$INIT"; }
    medddpm-synth demo-data -o "$WORK/data" --cases 400 --seed 2026 --grid $GRID --spacing $SPACING --quiet
  fi
  # one OpenMP thread: steady on a shared 2-core machine (two threads thrash when another process runs).
  # v prediction with MSE: the network predicts the image where the noisy input says nothing (background,
  # brightness); robust-volume: one intensity scale per volume (no per-slice stripes); cosine LR to a tenth.
  OMP_NUM_THREADS=1 medddpm-synth train --masks "$WORK/data/masks" --images "$WORK/data/images" -o "$WORK/run3" \
    --grid $GRID --spacing $SPACING --prediction v --normalisation robust-volume --loss l2 \
    --steps "$STEPS" --batch 1 --accum 1 --lr 1e-4 --lr-schedule cosine --ema-start 200 --ema-every 1 --ema-decay 0.998 \
    --precision bf16 --seed 1 --save-every 100 --log-every 10 --device cpu --quiet \
    --resume "$([ -n "${RESUME:-}" ] && echo "$WORK/run3/model-last.pt" || echo "$INIT")"
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
# phase 3's loss curve (phases 1-2 are in the history of this file)
python benchmarks/plot_training_log.py "$WORK/run3/train_log.csv" --until "$MODEL" -o "$OUT/demo_model_loss.png"
# realism on held-out cases (seed 7) against TorchIO's label->image baseline: the card's table
MEDDDPMSYNTH_DEMO_MODEL= python benchmarks/bench_realism.py --model demo --cases 6 --samples 2 --work "$WORK/realism" \
  --sampler dpm++:25 --sampler ddpm > benchmarks/results_realism_cpu.jsonl
# the card's machine-readable facts (checked by Testing/Python/test_demo_model.py)
MEDDDPMSYNTH_DEMO_MODEL= python - "$OUT/demo_model.json" "$MODEL" <<'PY'
import json, sys
import torch
from MedDDPMSynthLib.models import demo_entry
entry = demo_entry()
keep = ("file", "family", "grid_xyz", "spacing_mm", "timesteps", "prediction", "normalisation", "config", "sha256",
        "size_bytes", "container", "step")
card = {k: entry[k] for k in keep}
# phases 1-2: 6250 steps (eps); phase 3 counts its own steps from 0
card["steps_trained"] = 6250 + int(torch.load(sys.argv[2], map_location="cpu", weights_only=True)["step"])
card["labels"] = {"0": "background", "1": "brain (the whole-head family's head label)", "2": "tumour"}
open(sys.argv[1], "w").write(json.dumps(card, indent=2) + "\n")
PY
