"""Parity with the official Med-DDPM code, against tensors recorded by running it (Testing/Data/official).

Tolerances are those of the fixtures' README (CPU fp32), except the middle-block check (relative: see MIDDLE_RTOL).
Measured max |diff| are printed with -s.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from MedDDPMSynthLib import BRATS, WHOLE_HEAD, GaussianDiffusion, SeededNoise, UNetConfig, ddpm_sample
from MedDDPMSynthLib.model.checkpoint import build_model, infer_config
from MedDDPMSynthLib.model.sampling import ddpm_step
from MedDDPMSynthLib.model.schedule import BUFFER_NAMES, cosine_betas, schedule_buffers
from MedDDPMSynthLib.model.unet import timestep_embedding

RELEASED = {
    # manifest file, our config for it, T, parameter count of the denoiser
    "wholehead": ("manifest_wholehead_ema.json", UNetConfig(3, 1, 64, (1, 1, 2, 3, 4), 1, (8,)), 40_226_433),
    "brats": ("manifest_brats_ema.json", UNetConfig(8, 4, 64, (1, 1, 2, 3, 4), 2, ()), 57_562_564),
}
TINY = UNetConfig(3, 1, 32, (1, 1), 1, (2,))


def _maxdiff(a, b) -> float:
    diff = (torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max().item()
    print(f"max|diff| = {diff:.3g}")
    return diff


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_manifest_of_released_models(official_dir, name):
    manifest_file, config, n_params = RELEASED[name]
    manifest = json.loads((official_dir / manifest_file).read_text())
    with torch.device("meta"):
        model = GaussianDiffusion(config, timesteps=250)
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert ours == manifest["entries"]  # same keys, shapes, dtypes, same order
    assert sum(p.numel() for p in model.denoise_fn.parameters()) == n_params == manifest["denoiser_parameter_count"]


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_config_inferred_from_released_manifests(official_dir, name):
    manifest_file, config, _ = RELEASED[name]
    entries = json.loads((official_dir / manifest_file).read_text())["entries"]
    state = {k: torch.empty(shape, device="meta") for k, shape, _ in entries}
    inferred, timesteps = infer_config(state)
    assert inferred == config and timesteps == 250


def test_fast_sampling_bare_unet_is_refused_clearly(official_dir, tmp_path):
    """The older fast_sampling network has no wrapper/buffers and a different stride: not loadable."""
    from MedDDPMSynthLib import CheckpointError, read_state_dict

    entries = json.loads((official_dir / "manifest_fast_sampling_3dcddpm_net_model.json").read_text())["entries"]
    path = tmp_path / "3dcddpm_net.pth"
    torch.save({"model": {k: torch.zeros(s) for k, s, _ in entries}}, path)
    with pytest.raises(CheckpointError, match="bare U-Net"):
        read_state_dict(path)


def test_tiny_checkpoint_format_and_strict_load(tiny_raw_checkpoint):
    assert list(tiny_raw_checkpoint) == ["step", "model", "ema"]
    assert tiny_raw_checkpoint["step"] == 4000
    model = GaussianDiffusion(TINY, timesteps=10)
    model.load_state_dict(tiny_raw_checkpoint["ema"], strict=True)
    assert list(model.state_dict()) == list(tiny_raw_checkpoint["ema"])
    inferred, timesteps = infer_config(tiny_raw_checkpoint["ema"])
    assert inferred == TINY and timesteps == 10


@pytest.mark.parametrize("T", [10, 250])
def test_schedule_buffers(tiny_io, T):
    ours = schedule_buffers(cosine_betas(T))
    assert tuple(ours) == BUFFER_NAMES
    for name in BUFFER_NAMES:
        ref = tiny_io[f"buf_T{T}_{name}"]
        assert ours[name].dtype == torch.float32 and ours[name].shape == (T,)
        np.testing.assert_allclose(ours[name].numpy(), ref, rtol=1e-6, atol=1e-7, err_msg=name)
    assert ours["betas"][-1].item() == pytest.approx(0.999)  # the clip is active at the last step


def test_time_embedding(tiny_model, tiny_io):
    t = torch.from_numpy(tiny_io["eps_in_t"])
    assert _maxdiff(timestep_embedding(t, 32), tiny_io["temb_sinusoid"]) <= 1e-6
    with torch.no_grad():
        assert _maxdiff(tiny_model.diffusion.denoise_fn.embed(t), tiny_io["temb_mlp"]) <= 1e-6


def _eps_inputs(io):
    x = torch.cat([torch.from_numpy(io["eps_in_xt"]), torch.from_numpy(io["eps_in_cond"])], dim=1)
    return x, torch.from_numpy(io["eps_in_t"])


# The official tensors were recorded on another CPU; ours differ from them only by float32 rounding, whose
# size depends on the kernels oneDNN/MKL/ATen pick (AVX-512 or AVX2) and on the threads' summation order.
# Measured on an AMD EPYC (AVX-512) with 1, 2 and 4 threads, each with the default kernels, with
# ONEDNN_MAX_CPU_ISA=AVX2, and with that + ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 (4 threads
# gave exactly the 2-thread numbers):
#   eps (the network's output, max |ref| 2.25):  max|diff| 2.7e-6 .. 4.8e-6  -> atol 1e-5 kept as it was
#   middle block (intermediate, max |ref| 4.35): max|diff| 2.4e-6 .. 1.05e-5 = 0.55e-6 .. 2.41e-6 of max |ref|
# Rounding error scales with the tensor's magnitude, so the intermediate check is relative to it: 5e-6 of
# max |ref| (2x the worst measured); an absolute 1e-5 failed there with the default AVX-512 kernels (1.049e-5
# with 1 thread, 1.025e-5 with 2). Downstream: one step <= 0.46 of its bound, teacher-forced <= 4.7e-5 (2e-4),
# full run <= 2.0e-4 (2e-3): those tolerances stay.
MIDDLE_RTOL = 5e-6


def test_denoiser_eps_and_middle_block(tiny_model, tiny_io):
    net = tiny_model.diffusion.denoise_fn
    captured = {}
    hook = net.middle_block.register_forward_hook(lambda m, i, o: captured.setdefault("mid", o))
    with torch.no_grad():
        eps = net(*_eps_inputs(tiny_io))
    hook.remove()
    assert _maxdiff(eps, tiny_io["eps_out_ema"]) <= 1e-5
    reference = tiny_io["middle_block_out"]
    assert _maxdiff(captured["mid"], reference) <= MIDDLE_RTOL * np.abs(reference).max()


def test_model_key_weights_are_the_negative_control(tiny_raw_checkpoint, tiny_io):
    """The 'model' entry holds a different network: using it instead of 'ema' must be detectable."""
    net = build_model(tiny_raw_checkpoint["model"]).denoise_fn
    with torch.no_grad():
        eps = net(*_eps_inputs(tiny_io))
    assert _maxdiff(eps, tiny_io["eps_out_model_key"]) <= 1e-5
    assert (eps - torch.from_numpy(tiny_io["eps_out_ema"])).abs().max() > 1.0


def test_one_reverse_step(tiny_model, tiny_io):
    diffusion = tiny_model.diffusion
    x = torch.from_numpy(tiny_io["eps_in_xt"])
    cond = torch.from_numpy(tiny_io["eps_in_cond"])
    t = torch.from_numpy(tiny_io["eps_in_t"])
    # (a) the step formulas alone, fed the official network's recorded eps
    step = diffusion.posterior_from_eps(x, t, torch.from_numpy(tiny_io["eps_out_ema"]))
    assert _maxdiff(step.x0, tiny_io["x0_pred_clipped"]) <= 1e-5
    assert _maxdiff(step.mean, tiny_io["pmv_mean"]) <= 1e-5
    assert _maxdiff(step.variance, tiny_io["pmv_variance"]) <= 1e-5
    assert _maxdiff(step.log_variance, tiny_io["pmv_log_variance"]) <= 1e-5
    # (b) network + formulas: x0 = a*x - b*eps multiplies the eps tolerance by b (203 at t=9, reference
    # section 7.12), so the per-sample bound is 1e-5 * b (and coef1 * that for the mean).
    with torch.no_grad():
        step = diffusion.posterior(x, cond, t)
        eps = diffusion.predict_eps(x, cond, t)
    a = diffusion.sqrt_recip_alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    b = diffusion.sqrt_recipm1_alphas_cumprod[t].flatten()
    bound = 1e-5 * b

    def per_sample(ours, name):
        err = (ours - torch.from_numpy(tiny_io[name])).abs().amax(dim=(1, 2, 3, 4))
        print(name, "max|diff| per sample:", [f"{e:.3g}" for e in err.tolist()])
        return err

    assert (per_sample(a * x - b.view(-1, 1, 1, 1, 1) * eps, "x0_pred_raw") <= bound).all()
    assert (per_sample(step.x0, "x0_pred_clipped") <= bound).all()
    assert (per_sample(step.mean, "pmv_mean") <= bound * diffusion.posterior_mean_coef1[t]).all()


def test_teacher_forced_steps(tiny_model, tiny_io):
    cond = torch.from_numpy(tiny_io["cond_model_layout"])
    previous = torch.from_numpy(tiny_io["sample_noise_init"])
    worst = 0.0
    for k, t in enumerate(tiny_io["sample_step_t"]):
        z = torch.from_numpy(tiny_io["sample_noise_steps"][k])
        x = ddpm_step(tiny_model.diffusion, previous, cond, int(t), z)
        worst = max(worst, _maxdiff(x, tiny_io["sample_trajectory"][k]))
        previous = torch.from_numpy(tiny_io["sample_trajectory"][k])
    assert worst <= 2e-4


class _RecordedNoise:
    def __init__(self, io):
        self.draws = [io["sample_noise_init"], *io["sample_noise_steps"]]

    def draw(self):
        return torch.from_numpy(self.draws.pop(0))


def test_full_sampling_run_with_recorded_noise(tiny_model, tiny_io):
    noise = _RecordedNoise(tiny_io)
    out = ddpm_sample(tiny_model.diffusion, torch.from_numpy(tiny_io["cond_model_layout"]), noise)
    assert not noise.draws  # exactly 1 + T draws consumed
    assert _maxdiff(out, tiny_io["sample_output_model_layout"]) <= 2e-3


def test_rng_protocol_reproduces_recorded_noise(tiny_io):
    noise = SeededNoise(int(tiny_io["sample_seed"]), (1, 1, 16, 32, 32))
    assert torch.equal(noise.draw(), torch.from_numpy(tiny_io["sample_noise_init"]))
    for k in range(10):
        assert torch.equal(noise.draw(), torch.from_numpy(tiny_io["sample_noise_steps"][k]))


def test_seeded_end_to_end_matches_official_sample_py(tiny_model, tiny_io):
    """Engine API, seed only: the same array the official sample.py saved (layout transposed back)."""
    images = tiny_model.generate(tiny_io["label_volume_xyz"], seed=int(tiny_io["sample_seed"]))
    assert images.shape == (1, 1, 32, 32, 16)
    assert _maxdiff(images[0, 0], tiny_io["sample_output_saved_xyz"]) <= 2e-3


def test_wholehead_layout_exact(tiny_io):
    cond = WHOLE_HEAD.condition_from_labels(tiny_io["label_volume_xyz"])
    assert torch.equal(cond, torch.from_numpy(tiny_io["cond_model_layout"]))
    saved = WHOLE_HEAD.images_to_xyz(torch.from_numpy(tiny_io["sample_output_model_layout"]))[0, 0]
    assert np.array_equal(saved, tiny_io["sample_output_saved_xyz"])


def test_brats_layout_exact(brats_io):
    cond = BRATS.condition_from_labels(brats_io["label_volume_xyz"])
    assert torch.equal(cond, torch.from_numpy(brats_io["cond_model_layout"]))
    images = BRATS.images_to_xyz(torch.from_numpy(brats_io["sample_output_model_layout"]))
    assert np.array_equal(images[0, 0], brats_io["saved_t1_xyz_before_postprocess"])
    exported = BRATS.official_export_labels(brats_io["label_volume_xyz"])
    assert np.array_equal(exported, brats_io["saved_seg_xyz_before_postprocess"])
