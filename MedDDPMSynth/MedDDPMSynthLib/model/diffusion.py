"""The diffusion wrapper: 13 schedule buffers plus the denoiser, as in the official checkpoints.

``GaussianDiffusion.state_dict()`` has exactly the official key list (buffers unprefixed, the U-Net
under ``denoise_fn.``), so ``checkpoint['ema']`` loads strictly. The buffers loaded from a checkpoint
are authoritative for sampling.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from MedDDPMSynthLib.model.model_options import PREDICTIONS
from MedDDPMSynthLib.model.schedule import cosine_betas, schedule_buffers
from MedDDPMSynthLib.model.unet import UNet3D, UNetConfig


class PosteriorStep(NamedTuple):
    """One reverse-step prediction: posterior mean/variance of x_{t-1} and the clipped x0."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    x0: torch.Tensor


def _at(buffer: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-sample scalar buffer[t], shaped to broadcast over (B, C, D, H, W)."""
    return buffer.gather(-1, t).reshape(-1, *([1] * (ndim - 1)))


class GaussianDiffusion(nn.Module):
    """Med-DDPM model: cosine-schedule DDPM around a conditional 3-D U-Net.

    ``prediction`` is what the network outputs (see model_options.py): ``eps`` as the official models,
    ``v`` or ``x0``. Every sampler asks for eps through :meth:`predict_eps`, which converts the output, so
    all of them (ddpm, ddim, dpm++, RePaint) run any of the three."""

    def __init__(self, unet: UNetConfig, timesteps: int = 250, betas: np.ndarray | None = None,
                 prediction: str = "eps"):
        super().__init__()
        if timesteps < 1:
            raise ValueError("timesteps must be positive")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction '{prediction}'; use one of {', '.join(PREDICTIONS)}")
        self.prediction = prediction
        betas = cosine_betas(timesteps) if betas is None else betas
        for name, value in schedule_buffers(betas).items():
            self.register_buffer(name, value)
        self.denoise_fn = UNet3D(unet)

    @property
    def config(self) -> UNetConfig:
        return self.denoise_fn.config

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def image_channels(self) -> int:
        return self.config.out_channels

    @property
    def condition_channels(self) -> int:
        return self.config.in_channels - self.config.out_channels

    def network(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The raw network output; it sees the noisy image channels first, the condition channels after."""
        return self.denoise_fn(torch.cat([x, cond], dim=1), t)

    def predict_eps(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise, whatever the network predicts (eps: its output unchanged, as the official code)."""
        out = self.network(x, cond, t)
        if self.prediction == "eps":
            return out
        out = out.float()
        if self.prediction == "v":  # eps = sqrt(abar) v + sqrt(1 - abar) x_t
            return _at(self.sqrt_alphas_cumprod, t, x.ndim) * out + _at(self.sqrt_one_minus_alphas_cumprod, t, x.ndim) * x
        # x0: eps = (x_t / sqrt(abar) - x0) / sqrt(1/abar - 1)
        return (_at(self.sqrt_recip_alphas_cumprod, t, x.ndim) * x - out) / _at(self.sqrt_recipm1_alphas_cumprod, t, x.ndim)

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network should output for x_t = q_sample(x0, t, noise)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "v":
            return _at(self.sqrt_alphas_cumprod, t, x0.ndim) * noise - _at(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0
        return x0

    def predict_x0(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 from x_t and eps, clipped to [-1, 1] (the official sampler always clips)."""
        x0 = _at(self.sqrt_recip_alphas_cumprod, t, x.ndim) * x - _at(
            self.sqrt_recipm1_alphas_cumprod, t, x.ndim
        ) * eps
        return x0.clamp(-1.0, 1.0)

    def posterior(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> PosteriorStep:
        """Mean and (fixed-small) variance of p(x_{t-1} | x_t) for the network's predicted noise."""
        return self.posterior_from_eps(x, t, self.predict_eps(x, cond, t).float())

    def posterior_from_eps(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> PosteriorStep:
        x0 = self.predict_x0(x, t, eps)
        mean = _at(self.posterior_mean_coef1, t, x.ndim) * x0 + _at(self.posterior_mean_coef2, t, x.ndim) * x
        return PosteriorStep(mean, self.posterior_variance[t], self.posterior_log_variance_clipped[t], x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (training, in-painting)."""
        return _at(self.sqrt_alphas_cumprod, t, x0.ndim) * x0 + _at(
            self.sqrt_one_minus_alphas_cumprod, t, x0.ndim
        ) * noise
