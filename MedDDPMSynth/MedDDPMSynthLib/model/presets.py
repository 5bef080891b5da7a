"""Named sampler presets and the per-device default, one place for every front (CLI, Slicer, browser).

* ``exact``: the official ancestral sampler, all T steps, fp32 (what the paper's numbers are made with).
* ``preview``: the fast sampler a model recommends (safetensors metadata ``preview_sampler``,
  ``preview_steps``, ``preview_spacing``, ``preview_precision``, ``preview_eta``; written by
  ``models export --preview SPEC``, see :func:`preview_metadata`), else DPM-Solver++(3M) with
  ``PREVIEW_STEPS`` quadratically spaced evaluations under bf16 autocast: on the demo model its realism
  metrics equal those of the 25-step DPM-Solver++(2M) preview it replaces, and bf16 changes none of them
  (benchmarks/bench_realism.py; see benchmarks/README.md), at 40 % of the evaluations.

The preview's bf16 needs native kernels: oneDNN runs bf16 convolutions natively only with AVX-512 (BF16) or
AMX, and emulates them elsewhere (most laptop CPUs: AVX2 only). With ONEDNN_MAX_CPU_ISA=AVX2 on the
development machine one evaluation of the demo network took 3.4 s in fp32 and more than 6 CPU-minutes in bf16
(stopped there; 1.2 s with native bf16). On such a CPU the preset runs in fp32 and the one line says so.

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
#: the metadata keys by which a model file recommends its preview (:func:`preview_metadata`)
PREVIEW_KEYS = ("preview_sampler", "preview_steps", "preview_spacing", "preview_precision", "preview_eta")
#: the T a sampler spec is read against when no model is at hand (its steps are checked against the model's T later)
ANY_T = 10**9
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
        what += f", eta {s.eta:g}" if s.eta and s.name == "ddim" else ""
        return f"{self.preset or 'custom'} ({what}, {s.precision})"

    def line(self) -> str:
        """The one line every sampling command prints."""
        hint = ("; --sampler exact (or ddpm) for the official sampler" if self.settings.name != "ddpm" else "")
        return f"sampler: {self.describe()}: {self.reason}{hint}"

    def record(self) -> dict:
        """For provenance: the preset and the reason next to the settings."""
        return {"preset": self.preset, "reason": self.reason}


def native_precision(device_type: str, precision: str) -> bool:
    """Whether ``precision`` runs on native kernels on this kind of device (fp32 always does). On a CPU,
    oneDNN says for bf16/fp16 (it honours ONEDNN_MAX_CPU_ISA); on CUDA, bf16 needs compute capability 8."""
    if precision == "fp32":
        return True
    if device_type == "cpu":
        name = "_is_mkldnn_bf16_supported" if precision == "bf16" else "_is_mkldnn_fp16_supported"
        try:
            return bool(getattr(torch.ops.mkldnn, name)())
        except (AttributeError, RuntimeError):  # a torch built without oneDNN: emulated
            return False
    if device_type == "cuda" and precision == "bf16":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return True


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
    try:
        eta = float(meta.get("preview_eta") or 0.0)
    except (TypeError, ValueError):
        eta = 0.0
    settings = SamplerSettings(sampler, min(steps, timesteps), eta, str(meta.get("preview_spacing") or PREVIEW_SPACING),
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
        if "precision" not in overrides and not native_precision(device_type, settings.precision):
            reason += f" (in fp32: this {device_type.upper()} has no native {settings.precision})"
            settings = replace(settings, precision="fp32")
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


def parse_sampler_spec(text: str) -> SamplerSettings:
    """``NAME[:STEPS[:SPACING[:PRECISION[:ETA]]]]``, e.g. ``dpm++3m:10:quadratic:bf16`` or
    ``ddim:25:uniform:bf16:1`` (ETA: ddim only; omitted parts take SamplerSettings' defaults)."""
    parts = text.split(":")
    if len(parts) > 5 or not parts[0]:
        raise InputError(f"sampler '{text}' must read NAME[:STEPS[:SPACING[:PRECISION[:ETA]]]], e.g. ddim:25:uniform:bf16:1")
    name, steps, spacing, precision, eta = (parts + [""] * 4)[:5]
    try:
        settings = SamplerSettings(name, int(steps) if steps else None, float(eta) if eta else 0.0,
                                   spacing or "uniform", precision or "fp32")
    except ValueError:
        raise InputError(f"sampler '{text}': STEPS must be a whole number and ETA a number") from None
    if settings.eta and settings.name != "ddim":
        raise InputError(f"sampler '{text}': ETA applies to ddim only; drop it or use ddim")
    settings.check(settings.steps or ANY_T)  # names, spacing, precision and eta; the steps against T later
    return settings


def preview_metadata(settings: SamplerSettings, timesteps: int) -> dict[str, str]:
    """The metadata by which a model file recommends ``settings`` as its ``preview`` (a fast sampler with a
    number of steps: the exact sampler is a preset of its own)."""
    settings.check(timesteps)
    if settings.name == "ddpm" or not settings.steps:
        raise InputError("a preview is a fast sampler with a number of steps (e.g. ddim:25:uniform:bf16:1); "
                         "the exact sampler is always available as --sampler exact")
    return {"preview_sampler": settings.name, "preview_steps": str(settings.steps), "preview_spacing": settings.spacing,
            "preview_precision": settings.precision, "preview_eta": f"{settings.eta:g}"}


def recommended_preview(metadata: Mapping[str, object] | None) -> str | None:
    """The preview a model file recommends, as a spec (``ddim:25:uniform:bf16:1``), or None."""
    meta = metadata or {}
    if not meta.get("preview_sampler"):
        return None
    return sampler_spec(preset_settings("preview", ANY_T, meta))


def sampler_spec(settings: SamplerSettings) -> str:
    """The ``NAME:STEPS:SPACING:PRECISION[:ETA]`` text of ``settings`` (what parse_sampler_spec reads)."""
    spec = f"{settings.name}:{settings.steps or ''}:{settings.spacing}:{settings.precision}"
    return spec + (f":{settings.eta:g}" if settings.eta else "")
