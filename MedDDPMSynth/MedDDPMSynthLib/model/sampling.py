"""Reverse samplers behind one interface: ``ddpm`` (the official ancestral sampler, exact), ``ddim``
(any number of steps, eta, uniform or quadratic spacing), ``dpm++`` (DPM-Solver++ 2M, data prediction
with x0 clipping) and ``dpm++3m`` (third order, in dpm_solver_3m.py). In-painting (RePaint) runs on the
official sampler, or on a fast sampler's sub-sequence of steps (repaint_fast.py). All take the same
condition, noise source, progress and cancel callbacks.

Random numbers come from a :class:`SeededNoise` on the CPU and are moved to the model's device, so a
seed gives the same noise on every machine. With one integer seed the draws follow the official
protocol bit for bit: after ``manual_seed(seed)``, 1 + T draws of the full batch shape, draw 0 is x_T
and draw k the noise of the step at t = T - k (also drawn, and discarded, at t = 0).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from MedDDPMSynthLib.model.diffusion import GaussianDiffusion
from MedDDPMSynthLib.errors import GenerationCancelled, InputError

#: progress(done_steps, total_steps) after every network evaluation.
ProgressCallback = Callable[[int, int], None]
#: cancel() -> True to stop; checked before every step (``threading.Event().is_set`` fits).
CancelCheck = Callable[[], bool]


class NoiseSource(Protocol):
    def draw(self) -> torch.Tensor: ...


class SeededNoise:
    """Gaussian draws of ``shape`` (B, C, D, H, W) from CPU generators.

    ``seeds`` as one int: one generator draws the whole batch at once (the official protocol).
    ``seeds`` as a sequence of B ints: sample b has its own generator, so a batch equals B single runs.
    """

    def __init__(self, seeds: int | Sequence[int], shape: Sequence[int], device: torch.device | str = "cpu"):
        self.shape = tuple(shape)
        self.device = torch.device(device)
        if isinstance(seeds, int):
            self._generators = [torch.Generator("cpu").manual_seed(seeds)]
            self._shapes = [self.shape]
        else:
            seeds = list(seeds)
            if len(seeds) != self.shape[0]:
                raise ValueError(f"{len(seeds)} seeds for a batch of {self.shape[0]}")
            self._generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
            self._shapes = [(1, *self.shape[1:])] * len(seeds)

    def draw(self) -> torch.Tensor:
        parts = [torch.randn(s, generator=g) for s, g in zip(self._shapes, self._generators)]
        return torch.cat(parts).to(self.device)


def check_cancel(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise GenerationCancelled("generation cancelled by the user; nothing was written")


SAMPLERS = ("ddpm", "ddim", "dpm++", "dpm++3m")
SPACINGS = ("uniform", "quadratic")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: eps_fn(x, cond, t_batch) -> predicted noise in float32
EpsFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerSettings:
    """Which sampler, how many network evaluations (None = all T), and in which precision."""

    name: str = "ddpm"
    steps: int | None = None
    eta: float = 0.0
    spacing: str = "uniform"
    precision: str = "fp32"

    def check(self, timesteps: int) -> None:
        if self.name not in SAMPLERS:
            raise InputError(f"unknown sampler '{self.name}'; use one of {', '.join(SAMPLERS)}")
        if self.spacing not in SPACINGS:
            raise InputError(f"unknown step spacing '{self.spacing}'; use uniform or quadratic")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision '{self.precision}'; use fp32, bf16 or fp16")
        if self.name == "ddpm" and self.steps not in (None, timesteps):
            raise InputError(
                f"the ddpm sampler always runs all {timesteps} steps of this model; use --sampler ddim or dpm++ "
                "for fewer steps"
            )
        if self.steps is not None and not 1 <= self.steps <= timesteps:
            raise InputError(f"--steps must be between 1 and {timesteps} (the model's T), got {self.steps}")
        if self.name in ("dpm++", "dpm++3m") and self.steps == 1:
            raise InputError(f"{self.name} needs at least 2 steps; use --steps 2 or more")
        if not 0.0 <= self.eta <= 1.0:
            raise InputError(f"eta must be between 0 and 1, got {self.eta}")

    def evaluations(self, timesteps: int) -> int:
        return self.steps or timesteps


def timestep_sequence(timesteps: int, steps: int, spacing: str = "uniform") -> list[int]:
    """``steps`` distinct original indices from T-1 down to 0 (both ends always included)."""
    if steps == 1:
        return [timesteps - 1]
    if spacing == "uniform":
        seq = np.linspace(0, timesteps - 1, steps)
    else:  # denser near t = 0, where detail forms
        seq = np.linspace(0, np.sqrt(timesteps - 1), steps) ** 2
    seq = np.round(seq).astype(int)
    for i in range(1, steps):  # rounding may collide at the dense end: keep them strictly increasing
        seq[i] = max(seq[i], seq[i - 1] + 1)
    seq[-1] = timesteps - 1
    if len(set(seq.tolist())) != steps or seq.max() > timesteps - 1:
        raise InputError(f"{steps} {spacing} steps do not fit in T = {timesteps}; use fewer steps")
    return sorted(seq.tolist(), reverse=True)


def make_eps_fn(model: GaussianDiffusion, precision: str = "fp32") -> EpsFunction:
    """Network call under autocast for bf16/fp16 (norms stay fp32 inside the U-Net); fp32 out."""
    dtype = PRECISIONS[precision]

    def eps_fn(x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        context = (
            torch.autocast(device_type=x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        )
        with context:
            return model.predict_eps(x, cond, t).float()

    return eps_fn


@contextlib.contextmanager
def exact_math(enabled: bool = True):
    """fp32 without TF32 on Ampere+ GPUs (cuDNN convolutions use TF32 by default, which moves eps
    enough to be amplified ~5000x at large t); restores the previous flags afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def batch_timesteps(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


@torch.no_grad()
def ddpm_step(
    model: GaussianDiffusion, x: torch.Tensor, cond: torch.Tensor, t: int, z: torch.Tensor,
    eps_fn: EpsFunction | None = None,
) -> torch.Tensor:
    """One official ancestral step x_t -> x_{t-1}; ``z`` is ignored (but must be drawn) at t = 0."""
    t_batch = batch_timesteps(x, t)
    eps = (eps_fn or make_eps_fn(model))(x, cond, t_batch)
    step = model.posterior_from_eps(x, t_batch, eps)
    nonzero = float(t != 0)
    std = torch.exp(0.5 * step.log_variance).view(-1, *([1] * (x.ndim - 1)))  # per sample
    return step.mean + nonzero * std * z


@torch.no_grad()
def ddpm_sample(
    model: GaussianDiffusion,
    cond: torch.Tensor,
    noise: NoiseSource,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    eps_fn: EpsFunction | None = None,
) -> torch.Tensor:
    """Full-length official sampler: T network evaluations, returns x_0 in [-1, 1]."""
    total = model.num_timesteps
    eps_fn = eps_fn or make_eps_fn(model)
    x = initial_noise(noise, cond)
    for done, t in enumerate(reversed(range(total)), start=1):
        check_cancel(cancel)
        x = ddpm_step(model, x, cond, t, noise.draw(), eps_fn)
        if progress is not None:
            progress(done, total)
    return x


def initial_noise(noise: NoiseSource, cond: torch.Tensor) -> torch.Tensor:
    x = noise.draw()
    if x.shape[0] != cond.shape[0] or x.shape[2:] != cond.shape[2:]:
        raise ValueError(f"noise shape {tuple(x.shape)} does not fit condition {tuple(cond.shape)}")
    return x


def x0_estimate(model: GaussianDiffusion, x: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
    return model.predict_x0(x, batch_timesteps(x, t), eps)


@torch.no_grad()
def ddim_sample(
    model: GaussianDiffusion,
    cond: torch.Tensor,
    noise: NoiseSource,
    steps: int,
    eta: float = 0.0,
    spacing: str = "uniform",
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    eps_fn: EpsFunction | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021) with clipped x0; eta = 1 over all T steps is the official DDPM sampler.

    With eta > 0 a noise tensor is drawn at every step (the last one unused), as in the DDPM protocol."""
    eps_fn = eps_fn or make_eps_fn(model)
    abar = model.alphas_cumprod
    seq = timestep_sequence(model.num_timesteps, steps, spacing)
    x = initial_noise(noise, cond)
    for done, (t, t_prev) in enumerate(zip(seq, seq[1:] + [-1]), start=1):
        check_cancel(cancel)
        eps = eps_fn(x, cond, batch_timesteps(x, t))
        x0 = x0_estimate(model, x, t, eps)
        a_t, a_prev = abar[t], (abar[t_prev] if t_prev >= 0 else abar.new_tensor(1.0))
        eps = (x * model.sqrt_recip_alphas_cumprod[t] - x0) / model.sqrt_recipm1_alphas_cumprod[t]  # consistent with clipped x0
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x = torch.sqrt(a_prev) * x0 + torch.sqrt((1 - a_prev - sigma**2).clamp(min=0)) * eps
        if eta > 0:
            z = noise.draw()
            if t_prev >= 0:
                x = x + sigma * z
        if progress is not None:
            progress(done, steps)
    return x


@torch.no_grad()
def dpmpp_2m_sample(
    model: GaussianDiffusion,
    cond: torch.Tensor,
    noise: NoiseSource,
    steps: int,
    spacing: str = "uniform",
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    eps_fn: EpsFunction | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), multistep, in data-prediction form with x0 clipped to [-1, 1].

    Evaluations at ``steps`` discrete indices from T-1 to 0; the last evaluation's x0 is the output."""
    eps_fn = eps_fn or make_eps_fn(model)
    abar = model.alphas_cumprod.double()
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    lam = torch.log(alpha / sigma)
    seq = timestep_sequence(model.num_timesteps, steps, spacing)
    x = initial_noise(noise, cond)
    x0_prev, h_prev = None, None
    for done, (t, t_next) in enumerate(zip(seq, seq[1:] + [None]), start=1):
        check_cancel(cancel)
        x0 = x0_estimate(model, x, t, eps_fn(x, cond, batch_timesteps(x, t)))
        if t_next is None:
            x = x0
        else:
            h = (lam[t_next] - lam[t]).item()
            ratio, scale = (sigma[t_next] / sigma[t]).item(), (alpha[t_next] * -np.expm1(-h)).item()
            if x0_prev is None:  # first step: first order (DDIM)
                d = x0
            else:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = ratio * x + scale * d
            x0_prev, h_prev = x0, h
        if progress is not None:
            progress(done, steps)
    return x


@dataclass
class Inpainting:
    """Local re-generation: keep ``known`` where ``keep`` is 1 and regenerate the rest (RePaint,
    Lugmayr et al. 2022). ``jump``/``resample``: go back ``jump`` steps ``resample - 1`` times at every
    ``jump``-th step, so the regenerated region harmonises with the kept one (1 = plain replacement)."""

    known: torch.Tensor  # (B, C, D, H, W) image in [-1, 1]
    keep: torch.Tensor  # (B or 1, 1, D, H, W), 1 = keep, 0 = regenerate
    jump: int = 10
    resample: int = 3


def repaint_schedule(timesteps: int, jump: int, resample: int, lowest: int = 0) -> list[tuple[str, int]]:
    """Actions ('denoise', t): x_t -> x_{t-1}; ('renoise', t): x_{t-1} -> x_t, as a list. No jump starts below
    level ``lowest`` (0 = the official schedule: jumps down to the last step)."""
    actions, repeats = [], {}
    level = timesteps - 1  # x is at noise level ``level``; the next denoise step is t = level
    while level >= 0:
        actions.append(("denoise", level))
        level -= 1
        if resample > 1 and level >= lowest and level % jump == 0 and level + jump <= timesteps - 1 \
                and repeats.get(level, 0) < resample - 1:
            repeats[level] = repeats.get(level, 0) + 1
            actions.extend(("renoise", u) for u in range(level + 1, level + jump + 1))
            level += jump
    return actions


@torch.no_grad()
def repaint_sample(
    model: GaussianDiffusion,
    cond: torch.Tensor,
    noise: NoiseSource,
    inpaint: Inpainting,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    eps_fn: EpsFunction | None = None,
) -> torch.Tensor:
    """Official ancestral steps, with the kept region replaced after every step by the known image
    noised to that step's level; returns x_0 whose kept region equals ``known`` exactly."""
    eps_fn = eps_fn or make_eps_fn(model)
    actions = repaint_schedule(model.num_timesteps, inpaint.jump, inpaint.resample)
    total = sum(1 for a, _ in actions if a == "denoise")
    keep = inpaint.keep.to(cond.device, torch.float32)
    known = inpaint.known.to(cond.device, torch.float32)
    x, done = initial_noise(noise, cond), 0
    for action, t in actions:
        if action == "renoise":
            x = torch.sqrt(1 - model.betas[t]) * x + torch.sqrt(model.betas[t]) * noise.draw()
            continue
        check_cancel(cancel)
        x = ddpm_step(model, x, cond, t, noise.draw(), eps_fn)
        known_t = model.q_sample(known, batch_timesteps(x, t - 1), noise.draw()) if t > 0 else known
        x = keep * known_t + (1 - keep) * x
        done += 1
        if progress is not None:
            progress(done, total)
    return x


def run_sampler(
    model: GaussianDiffusion,
    cond: torch.Tensor,
    noise: NoiseSource,
    settings: SamplerSettings = SamplerSettings(),
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    inpaint: Inpainting | None = None,
) -> torch.Tensor:
    """Dispatch to the chosen sampler; returns images (B, C, D, H, W) in [-1, 1] (float32)."""
    settings.check(model.num_timesteps)
    eps_fn = make_eps_fn(model, settings.precision)
    steps = settings.evaluations(model.num_timesteps)
    with cancel_between_blocks(model, cancel):
        if inpaint is not None and settings.name == "ddpm":
            return repaint_sample(model, cond, noise, inpaint, progress, cancel, eps_fn)
        if inpaint is not None:  # RePaint on the fast sampler's sub-sequence of steps
            from MedDDPMSynthLib.model.repaint_fast import fast_repaint_sample
            return fast_repaint_sample(model, cond, noise, inpaint, steps, settings.spacing, progress, cancel, eps_fn)
        if settings.name == "ddpm":
            return ddpm_sample(model, cond, noise, progress, cancel, eps_fn)
        if settings.name == "ddim":
            return ddim_sample(model, cond, noise, steps, settings.eta, settings.spacing, progress, cancel, eps_fn)
        if settings.name == "dpm++3m":
            from MedDDPMSynthLib.model.dpm_solver_3m import dpmpp_3m_sample  # imports this module: loaded on first use
            return dpmpp_3m_sample(model, cond, noise, steps, settings.spacing, progress, cancel, eps_fn)
        return dpmpp_2m_sample(model, cond, noise, steps, settings.spacing, progress, cancel, eps_fn)


@contextlib.contextmanager
def cancel_between_blocks(model: GaussianDiffusion, cancel: CancelCheck | None):
    """Check ``cancel`` before every U-Net block too, not only between steps: one network pass on a
    large grid takes minutes on a CPU, and a front's Cancel must not wait for it to end."""
    unet = getattr(model, "denoise_fn", None)
    if cancel is None or unet is None:
        yield
        return
    blocks = [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
    handles = [b.register_forward_pre_hook(lambda _module, _inputs: check_cancel(cancel)) for b in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
