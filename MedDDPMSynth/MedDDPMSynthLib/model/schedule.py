"""Cosine noise schedule (Nichol & Dhariwal) and the 13 buffers of the Med-DDPM wrapper.

The buffers are part of the official state dict, so their names and order matter for strict loading.
Everything is computed in float64 and cast to float32 only at the end, exactly as the official wrapper
registers them (official `diffusion_model/trainer.py`, GaussianDiffusion).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

#: Buffer names in the order the official wrapper registers them (= state-dict order).
BUFFER_NAMES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "posterior_mean_coef3",
)


def cosine_betas(timesteps: int, s: float = 0.008) -> np.ndarray:
    """Float64 betas of the cosine schedule, clipped to [0, 0.999]."""
    steps = timesteps + 1
    # Same sample points and operation order as the official code (linspace over [0, T+1] / (T+1)),
    # so the float64 values agree to the last bit, not only algebraically.
    u = np.linspace(0, steps, steps) / steps
    f = np.cos(((u + s) / (1 + s)) * np.pi * 0.5) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return np.clip(betas, a_min=0, a_max=0.999)


def schedule_buffers(betas: np.ndarray) -> "OrderedDict[str, torch.Tensor]":
    """The 13 wrapper buffers (float32 tensors of length T) derived from float64 ``betas``."""
    betas = np.asarray(betas, dtype=np.float64)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)
    values = OrderedDict(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1),
        posterior_variance=posterior_variance,
        # Clamped at 1e-20 (not copied from index 1 as in guided-diffusion): index 0 never adds noise.
        posterior_log_variance_clipped=np.log(np.maximum(posterior_variance, 1e-20)),
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=coef2,
        # Multiplies a term that is always zero; kept only because strict loading needs the buffer.
        posterior_mean_coef3=1.0 - coef2,
    )
    assert tuple(values) == BUFFER_NAMES
    return OrderedDict((k, torch.tensor(v, dtype=torch.float32)) for k, v in values.items())
