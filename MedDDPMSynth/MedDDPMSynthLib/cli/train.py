"""``medddpm-synth train``: train (or continue) a Med-DDPM model on folders of masks and images.

Writes into OUTDIR: ``model-<step>.pt`` checkpoints in the official ``{step, model, ema}`` format (load
them with ``generate --model`` or ``models import``), each with a ``.train-state.pt`` sidecar for
``--resume``, ``model-last.pt`` (the newest), ``train_log.csv``/``.jsonl`` and ``config.json``.
Multi-GPU: ``torchrun --nproc-per-node G -m MedDDPMSynthLib train ...`` (same arguments).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from MedDDPMSynthLib.cli.numbers import float_list, int_list
from MedDDPMSynthLib.devices import DEVICES
from MedDDPMSynthLib.model.checkpoint import infer_config, model_options, read_state_dict
from MedDDPMSynthLib.training.run_config import write_run_config
from MedDDPMSynthLib import errors
from MedDDPMSynthLib.errors import CheckpointError, GenerationCancelled, InputError, OutputError
from MedDDPMSynthLib.domain.families import FAMILIES, family_for_channels
from MedDDPMSynthLib.domain.labels import LabelMapping
from MedDDPMSynthLib.data.train_data import PairedVolumeDataset
from MedDDPMSynthLib.model.model_options import NORMALISATIONS, PREDICTIONS
from MedDDPMSynthLib.model.sampling import PRECISIONS
from MedDDPMSynthLib.training.train_config import ARCHITECTURE, LR_SCHEDULES, WEIGHTINGS, TrainConfig
from MedDDPMSynthLib.training.train_state import read_train_state
from MedDDPMSynthLib.training.trainer import Trainer

EPILOG = """examples:
  # whole-head: masks/case1.nii.gz + images/case1.nii.gz, ...
  medddpm-synth train --masks masks/ --images images/ -o run1/ --steps 20000
  # BraTS: masks/<id>.nii.gz + images/<id>_t1, _t1ce, _t2, _flair
  medddpm-synth train --family brats --masks seg/ --images img/ -o run2/ --grid 96,96,64 --spacing 2,2,2
  # continue a run (from OUTDIR/model-last.pt, or a given checkpoint) up to step 40000
  medddpm-synth train --masks masks/ --images images/ -o run1/ --resume --steps 40000
  # 4 GPUs, same arguments
  torchrun --nproc-per-node 4 -m MedDDPMSynthLib train --masks masks/ --images images/ -o run1/ --precision bf16

matching: a mask's file name without extension (a trailing _seg/_mask/_label may be dropped) names its image.
exit codes: 0 ok, 1 runtime failure, 2 bad input or usage, 130 cancelled (the last saved checkpoint stays valid).
"""

#: option -> TrainConfig field, for the options that default to the config (None = not given)
CONFIG_OPTIONS = {
    "family": "family", "grid": "grid_xyz", "spacing": "spacing_mm", "channels": "model_channels",
    "mult": "channel_mult", "res_blocks": "num_res_blocks", "attention": "attention_ds", "timesteps": "timesteps",
    "steps": "steps", "batch": "batch_size", "accum": "grad_accum", "lr": "lr", "ema_start": "ema_start",
    "ema_every": "ema_every", "ema_decay": "ema_decay", "save_every": "save_every", "log_every": "log_every",
    "precision": "precision", "seed": "seed", "loss": "loss", "weighting": "weighting", "workers": "num_workers",
    "prediction": "prediction", "normalisation": "normalisation", "lr_schedule": "lr_schedule",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train a Med-DDPM model on masks and images",
        description="Train a Med-DDPM model on paired folders of label masks and images (any geometry).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--masks", required=True, type=Path, help="folder of label maps (.nii/.nii.gz/.nrrd/.mha ...)")
    p.add_argument("--images", required=True, type=Path, help="folder of the matching images")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder for checkpoints and logs")
    p.add_argument("--family", choices=tuple(FAMILIES), help="whole_head (1 image, default) or brats (t1, t1ce, t2, flair)")
    p.add_argument("--grid", type=int_list, metavar="X,Y,Z", help="model grid in voxels (default: the family's)")
    p.add_argument("--spacing", type=float_list, metavar="A,B,C", help="model voxel spacing in mm (default: the family's)")
    p.add_argument("--labels", metavar="NAME=V,...", help="which mask values are which tissue, e.g. head=1,tumor=2+3")
    arch = p.add_argument_group("architecture (fixed once a run has started)")
    arch.add_argument("--channels", type=int, help="base channels (multiple of 32; default 32)")
    arch.add_argument("--mult", type=int_list, metavar="M,...", help="channel multiplier per level (default 1,2,2,4)")
    arch.add_argument("--res-blocks", type=int, help="res-blocks per level (default 1)")
    arch.add_argument("--attention", type=int_list, metavar="DS,...", help="downsample factors with attention (default 8; '' none)")
    arch.add_argument("--timesteps", type=int, help="diffusion steps T (default 250)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, help="train up to this optimiser step (default 50000)")
    opt.add_argument("--batch", type=int, help="cases per batch and process (default 1)")
    opt.add_argument("--accum", type=int, help="gradient accumulation batches per step (default 2)")
    opt.add_argument("--lr", type=float, help="Adam learning rate (default 1e-5)")
    opt.add_argument("--loss", choices=("l1", "l2"), help="l1 (default, official) or l2")
    opt.add_argument("--weighting", choices=WEIGHTINGS,
                     help="loss weight per noise level: uniform (default, official) or truncated-snr (stresses high noise, "
                          "where the image must come from the mask)")
    opt.add_argument("--prediction", choices=PREDICTIONS,
                     help="what the network predicts: eps (default, official), v or x0 (recorded in the model; "
                          "v keeps background and brightness from drifting with the seed)")
    opt.add_argument("--normalisation", choices=NORMALISATIONS,
                     help="image intensities: robust-volume (default for new runs: one 0.5-99.5 percentile scale per "
                          "volume) or official (whole-head per axial slice, as the released weights; the default when "
                          "fine-tuning them); recorded in the model")
    opt.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                     help="constant (default) or cosine (from --lr down to a tenth of it at --steps)")
    opt.add_argument("--ema-start", type=int, help="step from which the EMA averages (before: copies; default 2000)")
    opt.add_argument("--ema-every", type=int, help="EMA update interval in steps (default 10)")
    opt.add_argument("--ema-decay", type=float, help="EMA decay (default 0.995)")
    opt.add_argument("--precision", choices=tuple(PRECISIONS), help="fp32 (default), bf16 or fp16 (GPU autocast)")
    opt.add_argument("--seed", type=int, help="seed of weights, data order and noise (default 0)")
    run_group = p.add_argument_group("run")
    run_group.add_argument("--save-every", type=int, help="checkpoint interval in steps (default 1000)")
    run_group.add_argument("--log-every", type=int, help="log interval in steps (default 1)")
    run_group.add_argument("--workers", type=int, help="data loading processes (default 0: in the main process)")
    run_group.add_argument("--device", default="auto", choices=DEVICES, help="default: auto")
    run_group.add_argument("--resume", nargs="?", const="last", metavar="CKPT",
                           help="continue from CKPT (default OUTDIR/model-last.pt) and its .train-state.pt")
    run_group.add_argument("--overwrite", action="store_true", help="start afresh in a non-empty output folder")
    run_group.add_argument("--no-cache", action="store_true", help="re-read the files every epoch (saves memory)")
    run_group.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)
    return p


def _given(args: argparse.Namespace) -> dict:
    """Config fields the user gave explicitly."""
    return {field: getattr(args, option) for option, field in CONFIG_OPTIONS.items() if getattr(args, option) is not None}


def _resume_path(args: argparse.Namespace) -> Path | None:
    if args.resume is None:
        return None
    return args.output / "model-last.pt" if args.resume == "last" else Path(args.resume)


def build_config(args: argparse.Namespace, resume: Path | None) -> TrainConfig:
    """Fresh run: defaults + options. Resume: the run's own config + options (architecture must agree)."""
    given = _given(args)
    state = read_train_state(resume) if resume is not None else None
    if state is None:  # fresh, or fine-tuning a checkpoint without a sidecar (e.g. released weights)
        inferred = _architecture_of(resume) if resume is not None else {}
        return TrainConfig(**{**inferred, **given})
    base = TrainConfig.from_dict(state["config"])
    config = TrainConfig.from_dict({**base.to_dict(), **given})
    changed = [f for f in ARCHITECTURE if getattr(config, f) != getattr(base, f)]
    if changed:
        raise InputError(f"{resume} was trained with {', '.join(f'{f}={getattr(base, f)}' for f in changed)}; "
                         "drop the conflicting options to continue it")
    return config


def _architecture_of(checkpoint: Path) -> dict:
    """Family, architecture and model options read off a checkpoint (as ``generate`` does); options given on
    the command line still win (fine-tuning an eps model into a v model, say)."""
    state, info = read_state_dict(checkpoint)
    unet, timesteps = infer_config(state, checkpoint)
    family = family_for_channels(unet.in_channels, unet.out_channels)
    options = model_options(info)  # its healthy landmarks are not carried over: each run measures its own data's
    return {"family": family.name, "model_channels": unet.model_channels, "channel_mult": unet.channel_mult,
            "num_res_blocks": unet.num_res_blocks, "attention_ds": unet.attention_ds, "timesteps": timesteps,
            "prediction": options.prediction, "normalisation": options.normalisation}


def _check_output(args: argparse.Namespace) -> None:
    out = args.output
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; give a folder for the checkpoints")
    if out.is_dir() and any(out.iterdir()) and args.resume is None and not args.overwrite:
        raise OutputError(f"{out} is not empty; choose a new folder, continue with --resume or start over with --overwrite")


def run(args: argparse.Namespace) -> int:
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:  # only one process judges (and then fills) the folder
        _check_output(args)
    resume = _resume_path(args)
    if resume is not None and not resume.is_file():
        raise CheckpointError(f"cannot resume: {resume} does not exist; give an existing checkpoint with --resume CKPT")
    config = build_config(args, resume)
    config.check()  # before reading any data
    family = FAMILIES[config.family]
    labels = LabelMapping.parse(args.labels, family) if args.labels else None
    dataset = PairedVolumeDataset(args.masks, args.images, family, config.grid_xyz, config.spacing_mm, labels,
                                  cache=not args.no_cache, normalisation=config.normalisation)
    if args.no_cache:
        dataset[0]  # bad files fail now, not hours in
    else:
        dataset.preload()
    config = replace(config, healthy_landmarks=dataset.healthy_landmarks() or ())
    trainer = Trainer(config, dataset, args.output, device=args.device, quiet=args.quiet)
    try:
        notes = trainer.resume(resume) if resume is not None else []
        if trainer.step >= config.steps:
            notes.append(f"the run is already at step {trainer.step}; give a larger --steps to train on")
        if trainer.dist.main:
            for note in notes:
                print(f"warning: {note}", file=sys.stderr)
            _write_config(args, config, trainer)
        try:
            trainer.train()
        except KeyboardInterrupt as interrupt:
            cancelled = GenerationCancelled(
                f"training cancelled at step {trainer.step}; the last saved checkpoint in {args.output} is complete "
                "(continue with --resume)"
            )
            # SIGTERM (errors.Terminated, raised by the command line's handler) exits 143, as every command does
            if isinstance(interrupt, errors.Terminated):
                cancelled.exit_code = 143
            raise cancelled from None
    finally:
        trainer.close()
    if trainer.dist.main:
        last = trainer.history[-1] if trainer.history else float("nan")
        print(f"trained to step {trainer.step} (loss {last:.4f}); wrote {args.output / 'model-last.pt'}")
    return 0


def _write_config(args: argparse.Namespace, config: TrainConfig, trainer: Trainer) -> None:
    write_run_config(
        args.output, config.to_dict(), masks=str(args.masks.resolve()), images=str(args.images.resolve()),
        labels=args.labels or "default", cases=len(trainer.dataset), world_size=trainer.dist.world,
        device=str(trainer.device), resumed_from=None if args.resume is None else str(_resume_path(args)))
