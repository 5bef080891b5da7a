"""``medddpm-synth dataset``: argument parsing, torchrun/--shard placement and the progress bar around
:mod:`.dataset`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from MedDDPMSynthLib.progress_bar import progress_bar
from MedDDPMSynthLib.cli.numbers import number_list
from MedDDPMSynthLib.devices import DEVICES
from MedDDPMSynthLib.data.dataset import DatasetRequest, build_dataset
from MedDDPMSynthLib.data.dataset_layout import FORMATS
from MedDDPMSynthLib.data.dataset_plan import EDITS, EditSettings, parse_shard
from MedDDPMSynthLib.errors import Terminated
from MedDDPMSynthLib.store.models import load_named_model
from MedDDPMSynthLib.cli.sampler_options import SAMPLER_HELP, add_sampler_options, announcer, resolve_sampler

EPILOG = f"""examples:
  # 2 samples per mask, nnU-Net v2 raw layout (imagesTr/, labelsTr/, dataset.json)
  medddpm-synth dataset --masks masks/ --model wholehead -o Dataset501_Synth --samples-per-mask 2
  # every mask also shifted on a 10 mm grid (26 shifts), fast sampler, bf16
  medddpm-synth dataset --masks masks/ --model wholehead -o out/ --edits shift-grid \\
      --sampler preview --precision bf16
  # all GPUs of this machine; or one shard of 8 per Slurm array task
  torchrun --nproc-per-node 4 -m MedDDPMSynthLib dataset --masks masks/ --model wholehead -o out/
  medddpm-synth dataset --masks masks/ --model wholehead -o out/ --shard $SLURM_ARRAY_TASK_ID/8

{SAMPLER_HELP}

Re-running the same command continues an interrupted run: complete cases are kept, partial ones redone;
case n of a mask variant always gets the same seed, so the result equals one uninterrupted run.
exit codes: 0 ok, 1 runtime failure, 2 bad input or usage, 130 cancelled (complete cases are kept), 143 terminated (SIGTERM, the same).
"""


def _factors(text: str) -> tuple[float, ...]:
    values = number_list(text, float)
    if values is None:
        raise argparse.ArgumentTypeError(f"'{text}' is not comma-separated numbers, e.g. 0.75,1.25")
    return values


def add_parser(commands) -> None:
    p = commands.add_parser(
        "dataset", help="turn a folder of masks into a synthetic training dataset (nnU-Net layout)",
        description="Generate image + mask pairs for every mask in a folder (optionally edited), resumably, "
                    "in the nnU-Net v2 raw layout or plain folders; shards over torchrun ranks or --shard.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--masks", required=True, type=Path, help="folder of label maps (one case each)")
    p.add_argument("--model", default="demo", help="'demo', an imported model's name, or a checkpoint path")
    p.add_argument("-o", "--output", required=True, type=Path, help="dataset folder (new, empty, or an earlier run's)")
    p.add_argument("--samples-per-mask", type=int, default=1, help="samples per mask and edit (default 1)")
    p.add_argument("--edits", default="none", help=f"extra mask variants: {' | '.join(EDITS)} (default none)")
    p.add_argument("--shift-step", type=float, default=10.0, metavar="MM", help="shift-grid step (default 10 mm)")
    p.add_argument("--shift-extent", type=float, default=10.0, metavar="MM", help="shift-grid extent (default 10 mm)")
    p.add_argument("--scale-factors", type=_factors, default=(0.75, 1.25), metavar="F,F",
                   help="scale-sweep factors (default 0.75,1.25)")
    p.add_argument("--format", default="nnunet", help=f"{' | '.join(FORMATS)} (default nnunet)")
    p.add_argument("--seed", type=int, default=0, help="global seed; each case's seed derives from it and the case id")
    p.add_argument("--labels", metavar="NAME=V,...", help="which mask values are which tissue, e.g. head=1,tumor=2+3")
    add_sampler_options(p)
    p.add_argument("--device", default="auto", choices=DEVICES, help="default: auto")
    p.add_argument("--batch", type=int, help="samples per network pass (default: up to 4 on a GPU, 1 on the CPU)")
    p.add_argument("--shard", metavar="I/N", help="make only shard I of N (0-based), e.g. one per Slurm array task")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from MedDDPMSynthLib.training.distributed import setup_distributed

    shard = parse_shard(args.shard)  # refusals first: nothing is loaded or written for a bad --shard
    edits = EditSettings(args.edits, args.shift_step, args.shift_extent, tuple(args.scale_factors))
    edits.check()
    info, device = setup_distributed(args.device)
    try:
        model = load_named_model(args.model, device=str(device))
        choice = resolve_sampler(args, model)
        batch = args.batch or (min(4, max(1, args.samples_per_mask)) if device.type == "cuda" else 1)
        request = DatasetRequest(
            masks=args.masks, output=args.output, samples_per_mask=args.samples_per_mask, edits=edits,
            format=args.format, seed=args.seed, labels=args.labels, batch=batch, shard=shard,
            sampler=choice.settings, sampler_choice=choice.record(),
        )
        bar = None

        stderr = _LineTracker(sys.stderr)

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                label = "cases" if info.world == 1 else f"cases (rank {info.rank}/{info.world})"
                bar = progress_bar(total=total, unit="case", desc=label, file=stderr, dynamic_ncols=True,
                           disable=args.quiet or not info.main)
            bar.total = total
            bar.update(done - bar.n)

        try:
            summary = build_dataset(request, model, args.model, info.rank, info.world, progress,
                                    started=announcer(choice, show=info.main))
        except KeyboardInterrupt as interrupt:
            if bar is not None:
                bar.close()
            if not stderr.at_line_start:  # the bar's line (even one cut short by the signal) ends first
                print(file=sys.stderr)
            print("cancelled: only complete cases were kept; run the same command again to continue",
                  file=sys.stderr)
            return 143 if isinstance(interrupt, Terminated) else 130
        finally:
            if bar is not None:
                bar.close()
    finally:
        if info.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    where = "" if info.world == 1 and shard == (0, 1) else \
        f" (shard {shard[0]}/{shard[1]}, rank {info.rank}/{info.world})"
    print(f"{len(summary.written)} case(s) written, {summary.already_complete} already complete, "
          f"{len(summary.skipped_edits)} skipped by the edit batch{where}; "
          f"{summary.complete_in_folder} complete case(s) in {args.output}")
    return 0


class _LineTracker:
    """A text stream that remembers whether what was last written to it ended its line, so a message
    after an interrupted progress bar starts on a line of its own whenever the signal came."""

    def __init__(self, stream):
        self.stream, self.at_line_start = stream, True

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        if text:
            self.at_line_start = text.endswith("\n")
        return written

    def flush(self) -> None:
        self.stream.flush()
