"""Samplers: each runs end to end, DDIM(eta=1, all steps) is the official DDPM, batch = singles,
cancel within one step, out-of-memory advice, and DPM-Solver++ is of higher order than DDIM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedDDPMSynthLib import GenerationCancelled, RuntimeFailure, SamplerSettings, SeededNoise
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.model.sampling import (
    ddim_sample,
    ddpm_sample,
    dpmpp_2m_sample,
    run_sampler,
    timestep_sequence,
)

SETTINGS = [
    SamplerSettings("ddpm"),
    SamplerSettings("ddim", steps=5),
    SamplerSettings("ddim", steps=4, eta=0.5, spacing="quadratic"),
    SamplerSettings("dpm++", steps=5),
    SamplerSettings("dpm++", steps=3, spacing="quadratic"),
    SamplerSettings("ddim", steps=5, precision="bf16"),
]


def _small(tiny_io):
    """Every other voxel of the recorded 32 x 32 x 16 label volume: a 16 x 16 x 8 head with its tumour, 8x fewer
    voxels per network pass, for the tests that compare samplers with each other rather than with recordings."""
    return tiny_io["label_volume_xyz"][::2, ::2, ::2]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"{s.name}-{s.steps}-{s.spacing}-{s.precision}")
def test_each_sampler_runs_end_to_end(tiny_model, tiny_io, settings):
    labels = _small(tiny_io)
    calls = []
    images = tiny_model.generate(labels, seed=3, sampler=settings, progress=lambda d, t: calls.append((d, t)))
    assert images.shape == (1, 1, 16, 16, 8) and images.dtype == np.float32
    assert np.isfinite(images).all() and images.min() >= -1 and images.max() <= 1
    steps = settings.steps or tiny_model.timesteps
    assert calls == [(k, steps) for k in range(1, steps + 1)]
    if settings.name == "dpm++":  # reproducible per seed (the ddpm case is the parity tests' job)
        assert np.array_equal(images, tiny_model.generate(labels, seed=3, sampler=settings))


def test_ddim_eta1_all_steps_equals_official_ddpm(tiny_model, tiny_io):
    cond = torch.from_numpy(tiny_io["cond_model_layout"][:, :, ::2, ::2, ::2].copy())  # as _small: 8 x 16 x 16
    shape = (1, 1, 8, 16, 16)
    ddpm = ddpm_sample(tiny_model.diffusion, cond, SeededNoise(11, shape))
    ddim = ddim_sample(tiny_model.diffusion, cond, SeededNoise(11, shape), steps=10, eta=1.0)
    diff = (ddpm - ddim).abs().max().item()
    print(f"ddim(eta=1, T steps) vs ddpm max|diff| = {diff:.3g}")
    assert diff <= 1e-4


@pytest.mark.parametrize("settings", SETTINGS[:4], ids=lambda s: f"{s.name}-{s.eta}")
def test_batch_equals_single_runs(tiny_model, tiny_io, settings):
    labels = _small(tiny_io)
    batched = tiny_model.generate(labels, seed=20, samples=2, batch=2, sampler=settings)
    singles = np.concatenate([tiny_model.generate(labels, seed=20 + n, sampler=settings) for n in range(2)])
    diff = np.abs(batched - singles).max()
    print(f"{settings.name}: batch vs singles max|diff| = {diff:.3g}")
    assert diff <= 1e-3
    assert np.abs(batched[0] - batched[1]).mean() > 0.1  # different seeds give different samples


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
def test_cancel_stops_within_one_step(tiny_model, tiny_io, name):
    evaluations = []
    hook = tiny_model.diffusion.denoise_fn.register_forward_hook(lambda *a: evaluations.append(1))
    done = []
    try:
        with pytest.raises(GenerationCancelled):
            tiny_model.generate(
                _small(tiny_io), sampler=SamplerSettings(name, steps=None if name == "ddpm" else 6),
                progress=lambda d, t: done.append(d), cancel=lambda: len(done) >= 3,
            )
    finally:
        hook.remove()
    assert len(evaluations) == 3  # cancelled before the 4th network evaluation


def test_out_of_memory_is_answered_with_advice(tiny_model, tiny_io, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(tiny_model.diffusion.denoise_fn, "forward", oom)
    with pytest.raises(RuntimeFailure, match="--batch 1 or --precision bf16") as info:
        tiny_model.generate(tiny_io["label_volume_xyz"], samples=2, batch=2)
    assert info.value.exit_code == 1


@pytest.mark.parametrize("T,steps", [(250, 25), (250, 10), (250, 250), (10, 10), (250, 2), (1000, 999)])
@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
def test_timestep_sequence(T, steps, spacing):
    seq = timestep_sequence(T, steps, spacing)
    assert len(seq) == steps == len(set(seq))
    assert seq[0] == T - 1 and seq[-1] == 0 and seq == sorted(seq, reverse=True)


@pytest.mark.parametrize(
    "settings,phrase",
    [
        (SamplerSettings("euler"), "unknown sampler"),
        (SamplerSettings("ddpm", steps=5), "always runs all"),
        (SamplerSettings("ddim", steps=0), "between 1 and"),
        (SamplerSettings("ddim", steps=11), "between 1 and"),
        (SamplerSettings("ddim", steps=5, eta=2.0), "eta"),
        (SamplerSettings("dpm++", steps=1), "at least 2"),
        (SamplerSettings("ddim", steps=5, precision="int8"), "precision"),
        (SamplerSettings("ddim", steps=5, spacing="cosine"), "spacing"),
    ],
)
def test_bad_sampler_settings(tiny_model, tiny_io, settings, phrase):
    with pytest.raises(InputError, match=phrase):
        tiny_model.generate(tiny_io["label_volume_xyz"], sampler=settings)


def test_bf16_network_stays_close_to_fp32(tiny_model, tiny_io):
    from MedDDPMSynthLib.model.sampling import make_eps_fn

    # every other voxel of the recorded inputs (3 samples, t = 9, 4, 0): bf16 kernels are slow where the CPU
    # lacks bf16 instructions (82 s with ONEDNN_MAX_CPU_ISA=AVX2 at full size)
    x = torch.from_numpy(tiny_io["eps_in_xt"][:, :, ::2, ::2, ::2].copy())
    cond = torch.from_numpy(tiny_io["eps_in_cond"][:, :, ::2, ::2, ::2].copy())
    t = torch.from_numpy(tiny_io["eps_in_t"])
    fp32 = make_eps_fn(tiny_model.diffusion, "fp32")(x, cond, t)
    bf16 = make_eps_fn(tiny_model.diffusion, "bf16")(x, cond, t)
    assert bf16.dtype == torch.float32
    rel = ((bf16 - fp32).norm() / fp32.norm()).item()
    print(f"bf16 vs fp32 eps relative error {rel:.3g}")
    assert 0 < rel < 0.05


def _gaussian_eps_fn(model, scale):
    """Exact eps predictor when the data are N(0, scale^2 I): the ideal network, in closed form."""
    abar = model.alphas_cumprod

    def eps_fn(x, cond, t):
        a = abar[t].view(-1, 1, 1, 1, 1)
        return torch.sqrt(1 - a) * x / (a * scale**2 + 1 - a)

    return eps_fn


def test_dpmpp_is_second_order_and_beats_ddim(tiny_model):
    """With the ideal network for data ~ N(0, s^2), the probability-flow ODE is a pure rescaling, so the
    exact sampler output is known in closed form. DDIM must converge at first order, DPM-Solver++(2M) faster."""
    from MedDDPMSynthLib import GaussianDiffusion

    model = GaussianDiffusion(tiny_model.diffusion.config, timesteps=250)
    scale = 0.3
    eps_fn = _gaussian_eps_fn(model, scale)
    cond, shape = torch.zeros(1, 2, 8, 8, 8), (1, 1, 8, 8, 8)
    abar = model.alphas_cumprod.double()
    x_T = SeededNoise(1, shape).draw().double()
    var = abar * scale**2 + 1 - abar  # marginal variance at each t
    x_0 = x_T * torch.sqrt(var[0] / var[-1])  # exact ODE solution at t = 0
    exact = (torch.sqrt(abar[0]) * scale**2 * x_0 / var[0]).float()  # its x0 prediction = the output

    def error(fn, steps):
        out = fn(model, cond, SeededNoise(1, shape), steps, spacing="quadratic", eps_fn=eps_fn)
        return (out - exact).abs().mean().item()

    ddim = {k: error(ddim_sample, k) for k in (16, 32)}
    dpm = {k: error(dpmpp_2m_sample, k) for k in (16, 32)}
    print(f"mean |x - exact| (quadratic spacing): ddim {ddim}, dpm++ {dpm}")
    assert 1.6 < ddim[16] / ddim[32] < 2.5  # first order: error halves when steps double
    assert dpm[16] / dpm[32] > 3.0  # higher order
    assert dpm[16] < 0.5 * ddim[16] and dpm[32] < 0.2 * ddim[32]


def test_run_sampler_dispatches(tiny_model, tiny_io):
    cond = torch.from_numpy(tiny_io["cond_model_layout"])
    noise = SeededNoise(int(tiny_io["sample_seed"]), (1, 1, 16, 32, 32))
    out = run_sampler(tiny_model.diffusion, cond, noise, SamplerSettings())
    assert (out - torch.from_numpy(tiny_io["sample_output_model_layout"])).abs().max() <= 2e-3
