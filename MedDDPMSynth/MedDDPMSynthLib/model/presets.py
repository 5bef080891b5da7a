"""Named sampler presets and the per-device default, one place for every front (CLI, Slicer, browser).

* ``exact``: the official ancestral sampler, all T steps, fp32 (what the paper's numbers are made with).
* ``preview``: the fast sampler a model recommends (safetensors metadata ``preview_sampler``,
  ``preview_steps``, ``preview_spacing``, ``preview_precision``), else DPM-Solver++(3M) with
  ``PREVIEW_STEPS`` quadratically spaced evaluations under bf16 autocast: on the demo model its realism
  metrics equal those of the 25-step DPM-Solver++(2M) preview it replaces, and bf16 changes none of them
  (benchmarks/bench_realism.py; see benchmarks/README.md), at 40 % of the evaluations.

Without sampler options a run takes ``preview`` on a CPU (the exact sampler takes minutes for the demo
model and hours for the official 128^3 models there) and ``exact`` on a GPU (seconds), and says which
in one line; ``--sampler ddpm`` (or ``exact``) gives the official sampler everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import torch

from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.model.sampling import SAMPLERS, SamplerSettings

PRESET_NAMES = ("preview", "exact")
#: preview defaults (a model may recommend its own in its metadata)
PREVIEW_SAMPLER, PREVIEW_STEPS, PREVIEW_SPACING, PREVIEW_PRECISION = "dpm++3m", 10, "quadratic", "bf16"


@dataclass(frozen=True)
class SamplerChoice:
    """The settings a run samples with, the preset they came from (None: custom) and why."""

    settings: SamplerSettings
    preset: str | None
    reason: str

    def describe(self) -> str:
        s = self.settings
        what = "ddpm, all steps" if s.name == "ddpm" else f"{s.name}, {s.steps} steps, {s.spacing} spacing"
        return f"{self.preset or 'custom'} ({what}, {s.precision})"

    def line(self) -> str:
        """The one line every sampling command prints."""
        hint = ("; --sampler exact (or ddpm) for the official sampler" if self.settings.name != "ddpm" else "")
        return f"sampler: {self.describe()}: {self.reason}{hint}"

    def record(self) -> dict:
        """For provenance: the preset and the reason next to the settings."""
        return {"preset": self.preset, "reason": self.reason}


def default_preset(device: torch.device | str) -> str:
    """``preview`` on a CPU, ``exact`` on a GPU (CUDA or Apple MPS)."""
    return "preview" if torch.device(device).type == "cpu" else "exact"


def preset_settings(name: str, timesteps: int, metadata: Mapping[str, object] | None = None) -> SamplerSettings:
    """A preset's settings for a model with ``timesteps`` steps (a preview never asks for more than T)."""
    if name == "exact":
        return SamplerSettings("ddpm")
    if name != "preview":
        raise InputError(f"unknown preset '{name}'; use {' or '.join(PRESET_NAMES)}")
    meta = metadata or {}
    sampler = str(meta.get("preview_sampler") or PREVIEW_SAMPLER)
    try:
        steps = int(meta.get("preview_steps") or PREVIEW_STEPS)
    except (TypeError, ValueError):
        steps = PREVIEW_STEPS
    settings = SamplerSettings(sampler, min(steps, timesteps), 0.0, str(meta.get("preview_spacing") or PREVIEW_SPACING),
                               str(meta.get("preview_precision") or PREVIEW_PRECISION))
    if settings.steps < 2 or timesteps < 2 * settings.steps:  # tiny test models: a preview of half their steps
        settings = replace(settings, name="ddim", steps=max(1, timesteps // 2), spacing="uniform")
    return settings


def choose_sampler(
    device: torch.device | str,
    timesteps: int,
    sampler: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    spacing: str | None = None,
    precision: str | None = None,
    metadata: Mapping[str, object] | None = None,
) -> SamplerChoice:
    """What to sample with: a preset (by name, or the device's default when ``sampler`` is None) with the
    given options on top, or a sampler by name with its options (``ddpm`` = the official sampler)."""
    overrides = {k: v for k, v in (("steps", steps), ("eta", eta), ("spacing", spacing), ("precision", precision))
                 if v is not None}
    device_type = torch.device(device).type
    if sampler is None or sampler in PRESET_NAMES:
        preset = sampler or default_preset(device_type)
        reason = (f"--sampler {preset}" if sampler else
                  f"the default on a {'CPU' if device_type == 'cpu' else 'GPU (' + device_type + ')'}")
        settings = preset_settings(preset, timesteps, metadata)
        if overrides:
            if preset == "exact" and "steps" in overrides:
                raise InputError("the exact preset always runs all steps; use --sampler preview, ddim or dpm++ for fewer")
            settings, preset = replace(settings, **overrides), preset + "+options"
    elif sampler in SAMPLERS:
        settings, reason = SamplerSettings(sampler, **overrides), f"--sampler {sampler}"
        preset = "exact" if settings == SamplerSettings("ddpm") else None
    else:
        raise InputError(f"unknown sampler '{sampler}'; use one of {', '.join((*PRESET_NAMES, *SAMPLERS))}")
    settings.check(timesteps)
    return SamplerChoice(settings, preset, reason)
