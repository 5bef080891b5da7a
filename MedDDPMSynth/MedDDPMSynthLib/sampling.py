"""Reverse samplers. ``ddpm`` is the official ancestral sampler, reproduced exactly.

Random numbers come from a :class:`SeededNoise` on the CPU and are moved to the model's device, so a
seed gives the same noise on every machine. With one integer seed the draws follow the official
protocol bit for bit: after ``manual_seed(seed)``, 1 + T draws of the full batch shape, draw 0 is x_T
and draw k the noise of the step at t = T - k (also drawn, and discarded, at t = 0).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch

from .diffusion import GaussianDiffusion
from .errors import GenerationCancelled

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


def _check_cancel(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise GenerationCancelled("generation cancelled by the user; nothing was written")


@torch.no_grad()
def ddpm_step(
    model: GaussianDiffusion, x: torch.Tensor, cond: torch.Tensor, t: int, z: torch.Tensor
) -> torch.Tensor:
    """One official ancestral step x_t -> x_{t-1}; ``z`` is ignored (but must be drawn) at t = 0."""
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    step = model.posterior(x, cond, t_batch)
    nonzero = float(t != 0)
    return step.mean + nonzero * torch.exp(0.5 * step.log_variance) * z


@torch.no_grad()
def ddpm_sample(
    model: GaussianDiffusion,
    cond: torch.Tensor,
    noise: NoiseSource,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """Full-length official sampler: T network evaluations, returns x_0 in [-1, 1]."""
    total = model.num_timesteps
    x = noise.draw()
    if x.shape[0] != cond.shape[0] or x.shape[2:] != cond.shape[2:]:
        raise ValueError(f"noise shape {tuple(x.shape)} does not fit condition {tuple(cond.shape)}")
    for done, t in enumerate(reversed(range(total)), start=1):
        _check_cancel(cancel)
        x = ddpm_step(model, x, cond, t, noise.draw())
        if progress is not None:
            progress(done, total)
    return x

