"""The sampler options of every command that samples (generate, generate --keep, insert, anonymize,
dataset): one set of flags, one resolution through :func:`presets.choose_sampler`, one printed line."""

from __future__ import annotations

import argparse
import sys

from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.model.presets import PRESET_NAMES, PREVIEW_PRECISION, PREVIEW_SAMPLER, PREVIEW_STEPS, SamplerChoice, choose_sampler
from MedDDPMSynthLib.protocol import warning_line
from MedDDPMSynthLib.model.sampling import PRECISIONS, SAMPLERS, SPACINGS

SAMPLER_HELP = f"""sampler: without --sampler a run takes 'preview' on a CPU and 'exact' on a GPU, and prints which.
  preview  the model's recommended fast sampler ('models info' shows it; a model without one:
           {PREVIEW_SAMPLER}, {PREVIEW_STEPS} steps, {PREVIEW_PRECISION}): seconds on a CPU
  exact    the official sampler (= ddpm), all T steps: the published quality, minutes to hours on a CPU
  ddpm / ddim / dpm++ / dpm++3m with --steps, --step-spacing, --eta: a sampler of your own.
  In-painting (--keep, insert) with a fast sampler runs RePaint on its sub-sequence of steps."""


def add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """--sampler, --steps, --eta, --step-spacing, --precision; all default to None (= the preset's value)."""
    group = parser.add_argument_group("sampler", SAMPLER_HELP.split("\n", 1)[0])
    group.add_argument("--sampler", choices=(*PRESET_NAMES, *SAMPLERS), default=None,
                       help="preview / exact (presets) or a sampler by name (default: preview on a CPU, exact on a GPU)")
    group.add_argument("--steps", type=int, help="network evaluations of a fast sampler (default: the preset's)")
    group.add_argument("--eta", type=float, help="ddim only: 0 deterministic (default) .. 1 ancestral")
    group.add_argument("--step-spacing", choices=SPACINGS,
                       help="fast samplers' time-step spacing (default: the preset's)")
    # its old name, kept as a deprecated alias: elsewhere (train, models import) --spacing is voxel spacing in mm
    group.add_argument("--spacing", dest="deprecated_spacing", choices=SPACINGS, help=argparse.SUPPRESS)
    group.add_argument("--precision", choices=tuple(PRECISIONS),
                       help=f"fp32 (exact) or bf16 / fp16 autocast (default: the preset's: {PREVIEW_PRECISION} for "
                            "preview, fp32 for exact)")


def resolve_sampler(args: argparse.Namespace, model) -> SamplerChoice:
    """The sampler for this run on ``model`` (a loaded :class:`api.SynthesisModel`); a bad combination of
    options is refused here, before anything is read or written."""
    return choose_sampler(model.device, model.timesteps, args.sampler, args.steps, args.eta, step_spacing(args),
                          args.precision, metadata=model.info.metadata)


def step_spacing(args: argparse.Namespace) -> str | None:
    """The time-step spacing asked for (None: the preset's); the deprecated ``--spacing`` still means it
    here, with a warning."""
    old, new = getattr(args, "deprecated_spacing", None), args.step_spacing
    if old is None:
        return new
    if new is not None and new != old:
        raise InputError(f"--spacing {old} and --step-spacing {new} disagree; give --step-spacing only")
    print(warning_line("--spacing is deprecated for the time-step spacing; use --step-spacing (--spacing is the "
                       "voxel spacing in mm in 'train' and 'models import')"), file=sys.stderr)
    return old


def announcer(choice: SamplerChoice, show: bool = True):
    """A callable that prints the choice's one line on its first call: the commands call it when sampling
    starts (their first progress report), so a refused input prints nothing but its error line; on stdout,
    with the command's other results, so a failure later on is still one line on stderr."""
    state = {"done": not show}

    def announce() -> None:
        if not state["done"]:
            state["done"] = True
            print(choice.line(), flush=True)

    return announce
