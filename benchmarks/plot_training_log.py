#!/usr/bin/env python
"""Loss curve PNG of a 'medddpm-synth train' run (its train_log.csv), for model cards.

Draws the logged loss (grey) and a moving average (black) on a log-scaled y axis with Pillow (a
development tool: ``pip install pillow``). Prints one JSON line with the first/last smoothed loss.
Several logs (a run, then a fine-tuning run started from its checkpoint) are drawn end to end, with a
blue line where each later one starts (its loss may be weighted differently).

  python benchmarks/plot_training_log.py run/train_log.csv -o MedDDPMSynth/Resources/Models/demo_model_loss.png
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 720, 360, 56


def _objective(log: Path) -> str:
    """What the run's loss measures, from the config.json the trainer writes beside its log."""
    try:
        config = json.loads((log.parent / "config.json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        return "as the run defines it"
    return (f"{config.get('loss', 'l1').upper()} on {config.get('prediction', 'eps')}, "
            f"{config.get('weighting', 'uniform')} weighting")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", type=Path, nargs="+", help="train_log.csv of a run (then of runs continuing it)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--window", type=int, default=20, help="moving-average window in log rows")
    parser.add_argument("--until", type=Path, metavar="CKPT", help="draw only the steps up to this checkpoint's step")
    args = parser.parse_args()
    by_step, starts = {}, []
    for log in args.logs:
        with log.open() as handle:
            # a step logged twice (a resumed run, or a later log continuing it): the later row wins
            rows = list(csv.DictReader(handle))
        if rows and by_step:
            starts.append(min(int(r["step"]) for r in rows))
        by_step.update({int(r["step"]): r for r in rows})
    if args.until is not None:
        import torch  # only for this option

        last = int(torch.load(args.until, map_location="cpu", weights_only=True)["step"])
        by_step = {step: row for step, row in by_step.items() if step <= last}
        starts = [s for s in starts if s <= last]
    rows = sorted(by_step.values(), key=lambda r: int(r["step"]))
    steps = np.array([float(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    window = max(1, min(args.window, len(loss)))
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    smooth_steps = steps[window - 1:]

    low, high = math.log10(loss.min() * 0.9), math.log10(loss.max() * 1.1)
    def xy(s, v):
        x = MARGIN + (s - steps[0]) / max(steps[-1] - steps[0], 1) * (WIDTH - 2 * MARGIN)
        y = HEIGHT - MARGIN - (math.log10(v) - low) / (high - low) * (HEIGHT - 2 * MARGIN)
        return x, y

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([MARGIN, MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], outline="black")
    for exponent in range(math.floor(low), math.ceil(high) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0 ** exponent
            if low <= math.log10(value) <= high:
                _, y = xy(steps[0], value)
                draw.line([MARGIN, y, WIDTH - MARGIN, y], fill=(225, 225, 225))
                draw.text((4, y - 6), f"{value:g}", fill="black")
    for k in range(5):
        s = steps[0] + k / 4 * (steps[-1] - steps[0])
        x, _ = xy(s, 10 ** low)
        draw.text((x - 12, HEIGHT - MARGIN + 6), f"{s:.0f}", fill="black")
    draw.line([xy(s, v) for s, v in zip(steps, loss)], fill=(170, 170, 170), width=1)
    draw.line([xy(s, v) for s, v in zip(smooth_steps, smooth)], fill="black", width=2)
    for start in starts:
        x, _ = xy(start, 10 ** low)
        draw.line([x, MARGIN, x, HEIGHT - MARGIN], fill=(40, 90, 220), width=2)
        draw.text((x + 4, MARGIN + 4), f"from {start}: next run", fill=(40, 90, 220))
    draw.text((MARGIN, 18), f"training loss ({_objective(args.logs[-1])}), log scale; moving average of {window} rows",
              fill="black")
    draw.text((WIDTH // 2 - 30, HEIGHT - 22), "optimiser step", fill="black")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output)
    print(json.dumps({"rows": len(rows), "run_starts": starts, "first_step": int(steps[0]), "last_step": int(steps[-1]),
                      "smoothed_loss_first": round(float(smooth[0]), 4), "smoothed_loss_last": round(float(smooth[-1]), 4)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
