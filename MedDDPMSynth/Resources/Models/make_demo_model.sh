#!/usr/bin/env bash
# How the bundled demo model and its card's figures and numbers were made: every step is a medddpm-synth
# command (plus the loss-curve and realism scripts). Run from the repository root with the package installed
# (pip install -e ".[test,bench]"); WORK holds the data and the training runs.
#
# Phases 1-2 (history, this script at commit c9c076f, demo-data generator version 1): 6000 steps of the
# official objective (eps prediction, per-slice normalisation, uniform L1), then 250 steps of truncated-SNR
# fine-tuning: the eps model shipped until then, whose samples had a grey background, stripes along z and
# dark tumours (see the model card). Phase 3 (commit 18b5455): fine-tune that network into a v-predicting
# model on robust whole-volume intensities, with demo-data generator version 2 (mostly bright enhancing
# tumours): 600 steps. Phase 4 (this script): the same objective and data, 800 steps from phase 3's file with
# a fresh optimiser (its optimiser state was not kept); its step 700 shipped at commit 4d92a10. Phase 5: the
# same run resumed at step 800 with the cosine stretched to 2000 steps (a warm restart: the learning rate goes
# back up to 6.8e-5 at step 801, then down to 1e-5); its step 2000 shipped at commit 619ae4b. Phase 6: on to
# 4000 with the cosine stretched again (lr back up to 6.8e-5). Phase 7: on from step 4000 with the cosine
# stretched to 7000 (lr back up to 4.5e-5); its step 7000 shipped at commit da1d17a. Phase 8 (the shipped
# file): on from step 7000 with the cosine stretched to STEPS = 10000 (lr back up to 2.9e-5); the shipped
# file is the EMA weights of step EXPORT_STEP, and it recommends ancestral DDIM (eta 1, PREVIEW) as its
# preview sampler. Each warm restart is a function of the step and --steps alone, so the run is reproduced
# exactly (the resume tests check bit-identity).
#   WORK=/tmp/demo bash MedDDPMSynth/Resources/Models/make_demo_model.sh                  # phases 4-8, export, card numbers
#   RESUME=1 STEPS=12000 WORK=/tmp/demo bash MedDDPMSynth/Resources/Models/make_demo_model.sh # on from the last checkpoint
#   SKIP_TRAINING=1 WORK=/tmp/demo bash MedDDPMSynth/Resources/Models/make_demo_model.sh  # export + card only
#   ... MODEL=/tmp/demo/run4/model-last.pt ...   export that checkpoint instead of step EXPORT_STEP
set -euo pipefail
WORK=${WORK:-demo-work}
STEPS=${STEPS:-10000}
EXPORT_STEP=${EXPORT_STEP:-10000}
MODEL=${MODEL:-$WORK/run4/model-$EXPORT_STEP.pt}
INIT=${INIT:-$WORK/phase3-model-6850.safetensors}
BEFORE=${BEFORE:-$WORK/phase7-model-13850.safetensors}
# the preview the file recommends (models export --preview): ancestral DDIM, 25 uniform steps, bf16; on 4 held-out
# cases it beat the built-in dpm++3m 10 on MS-SSIM, anatomy and MMD without its speckle (README beside this file)
PREVIEW=${PREVIEW:-ddim:25:uniform:bf16:1}
GRID=48,64,48
SPACING=3.5,3.5,3.5
OUT=MedDDPMSynth/Resources/Models

train_run4() {  # train_run4 STEPS RESUME_FROM: the run of phases 4 to 8
  # one OpenMP thread: steady on a shared 2-core machine (two threads thrash when another process runs).
  # v prediction with MSE: the network predicts the image where the noisy input says nothing (background,
  # brightness); robust-volume: one intensity scale per volume (no per-slice stripes); cosine LR to a tenth.
  OMP_NUM_THREADS=1 medddpm-synth train --masks "$WORK/data/masks" --images "$WORK/data/images" -o "$WORK/run4" \
    --grid $GRID --spacing $SPACING --prediction v --normalisation robust-volume --loss l2 \
    --steps "$1" --batch 1 --accum 1 --lr 1e-4 --lr-schedule cosine --ema-start 100 --ema-every 1 --ema-decay 0.998 \
    --precision bf16 --seed 4 --save-every 100 --log-every 10 --device cpu --quiet --resume "$2"
}

if [ -z "${SKIP_TRAINING:-}" ]; then
  if [ -z "${RESUME:-}" ]; then
    # the phase-3 network as it shipped (its EMA weights, fp16) is where phase 4 starts
    [ -f "$INIT" ] || { mkdir -p "$WORK" && git show 18b5455:MedDDPMSynth/Resources/Models/demo_model.safetensors > "$INIT"; }
    medddpm-synth demo-data -o "$WORK/data" --cases 400 --seed 2026 --grid $GRID --spacing $SPACING --quiet
    train_run4 800 "$INIT"  # phase 4
    train_run4 2000 "$WORK/run4/model-last.pt"  # phase 5
    train_run4 4000 "$WORK/run4/model-last.pt"  # phase 6
    train_run4 7000 "$WORK/run4/model-last.pt"  # phase 7
  fi
  train_run4 "$STEPS" "$WORK/run4/model-last.pt"  # phase 8 (and on)
fi

medddpm-synth models export "$MODEL" -o "$OUT/demo_model.safetensors" --dtype fp16 --preview "$PREVIEW" --overwrite

# held-out cases (another seed than the training data): the first three, one sample each with the CPU default
# (the preview preset: the file's own), then the card's metrics and montage
medddpm-synth demo-data -o "$WORK/heldout" --cases 4 --seed 7 --grid $GRID --spacing $SPACING --quiet
rm -rf "$WORK/generated" "$WORK/heldout3" && mkdir -p "$WORK/generated" "$WORK/heldout3/images" "$WORK/heldout3/masks"
for case in case_0000 case_0001 case_0002; do
  cp "$WORK/heldout/images/$case.nii.gz" "$WORK/heldout3/images/"; cp "$WORK/heldout/masks/$case.nii.gz" "$WORK/heldout3/masks/"
  MEDDDPMSYNTH_DEMO_MODEL= medddpm-synth generate --mask "$WORK/heldout/masks/$case.nii.gz" --model demo --seed 0 \
    -o "$WORK/generated/${case}_s0.nii.gz" --quiet
done
medddpm-synth evaluate --generated "$WORK/generated" --reference "$WORK/heldout3/images" --masks "$WORK/heldout3/masks" \
  -o "$OUT/demo_model_eval.json" --montage "$OUT/demo_model_montage.png" --overwrite
# phases 4-8's loss curve (phases 1-3 are in the history of this file)
python benchmarks/plot_training_log.py "$WORK/run4/train_log.csv" --until "$MODEL" -o "$OUT/demo_model_loss.png"
# realism on 8 held-out cases (seed 7) with the file's preview and with the built-in one, against phase 7 (the
# file shipped before) and TorchIO's label->image baseline; then the background target with dpm++ 25 (4 cases)
# and the exact sampler (2 cases: 250 network evaluations a sample)
[ -f "$BEFORE" ] || git show da1d17a:MedDDPMSynth/Resources/Models/demo_model.safetensors > "$BEFORE"
MEDDDPMSYNTH_DEMO_MODEL= python benchmarks/bench_realism.py --model demo --model "$BEFORE" --cases 8 --samples 1 \
  --work "$WORK/realism8" --sampler "$PREVIEW" --sampler dpm++3m:10:quadratic:bf16 > benchmarks/results_realism_phase8_cpu.jsonl
MEDDDPMSYNTH_DEMO_MODEL= python benchmarks/bench_realism.py --model demo --cases 4 --samples 1 --no-baseline \
  --work "$WORK/realism" --sampler dpm++:25 > benchmarks/results_realism_phase8_samplers_cpu.jsonl
MEDDDPMSYNTH_DEMO_MODEL= python benchmarks/bench_realism.py --model demo --cases 2 --samples 1 --no-baseline \
  --work "$WORK/realism2" --sampler ddpm >> benchmarks/results_realism_phase8_samplers_cpu.jsonl
# the README's edit-and-insert figure (tumour shift + local re-generation; a tumour inserted into the MNI T1),
# with its numbers; the browser screenshot docs/images/web_app.png is retaken by
# MEDDDPMSYNTH_SAVE_SCREENSHOT=1 pytest Testing/Python/web/test_web_browser.py -k "first_generate or bundled"
MEDDDPMSYNTH_DEMO_MODEL= python benchmarks/figure_edit_insert.py -o docs/images/edit_and_insert.png --work "$WORK/figure" \
  | tail -n 1 > benchmarks/results_figure_edit_insert.json  # its last line: the JSON (the commands' own lines before it)
# the card's machine-readable facts (checked by Testing/Python/test_demo_model.py)
MEDDDPMSYNTH_DEMO_MODEL= python - "$OUT/demo_model.json" "$MODEL" <<'PY'
import json, sys
import torch
from MedDDPMSynthLib.store.models import demo_entry
entry = demo_entry()
keep = ("file", "family", "grid_xyz", "spacing_mm", "timesteps", "prediction", "normalisation", "config", "sha256",
        "size_bytes", "container", "step", "healthy_landmarks", "preview")
card = {k: entry[k] for k in keep}
# phases 1-2: 6250 steps (eps), phase 3: 600 steps; phases 4-7 count their own steps from 0
card["steps_trained"] = 6250 + 600 + int(torch.load(sys.argv[2], map_location="cpu", weights_only=True)["step"])
card["labels"] = {"0": "background", "1": "brain (the whole-head family's head label)", "2": "tumour"}
open(sys.argv[1], "w").write(json.dumps(card, indent=2) + "\n")
PY
