"""Model options (prediction target, intensity normalisation): recorded in every model file and read back by
every sampler; v- and x0-predicting models sample exactly as the equivalent eps model (closed form on
Gaussian data); the robust volume normalisation keeps the slices' relative brightness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedDDPMSynthLib import WHOLE_HEAD, GaussianDiffusion, SeededNoise, load_model
from MedDDPMSynthLib.model.checkpoint import load_checkpoint, model_options, save_official_checkpoint
from MedDDPMSynthLib.errors import CheckpointError, InputError
from MedDDPMSynthLib.model.model_options import CHECKPOINT_KEY, ModelOptions
from MedDDPMSynthLib.store.models import export_model
from MedDDPMSynthLib.model.sampling import Inpainting, SamplerSettings, run_sampler
from MedDDPMSynthLib.data.train_data import PairedVolumeDataset
from MedDDPMSynthLib.domain.normalisation import fit_intensity
from MedDDPMSynthLib.training.train_config import TrainConfig
from MedDDPMSynthLib.model.unet import UNetConfig

SCALE = 0.3  # data ~ N(0, SCALE^2): the ideal network of each target is known in closed form
TINY = UNetConfig(3, 1, 32, (1, 2), 1, ())
# the deterministic samplers' first x0 = x_t / sqrt(abar) - sqrt(1/abar - 1) eps multiplies float32 round-off
# in eps by ~1/sqrt(abar_249) (thousands): measured 1.2e-4 (ddim, dpm++) and < 1e-6 (ddpm) between targets
TOL = 5e-4


def _ideal(model: GaussianDiffusion):
    """The Bayes-optimal network output for Gaussian data, in the model's own prediction target."""
    abar = model.alphas_cumprod

    def network(x, cond, t):
        a = abar[t].view(-1, 1, 1, 1, 1)
        var = a * SCALE**2 + 1 - a
        eps = torch.sqrt(1 - a) * x / var
        x0 = torch.sqrt(a) * SCALE**2 * x / var
        return {"eps": eps, "v": torch.sqrt(a) * eps - torch.sqrt(1 - a) * x0, "x0": x0}[model.prediction]

    return network


def _model(prediction: str, timesteps: int = 250) -> GaussianDiffusion:
    model = GaussianDiffusion(TINY, timesteps, prediction=prediction)
    model.network = _ideal(model)  # the samplers reach the network only through predict_eps
    return model


SAMPLERS = [SamplerSettings("ddpm"), SamplerSettings("ddim", steps=16, spacing="quadratic"),
            SamplerSettings("ddim", steps=10, eta=0.5), SamplerSettings("dpm++", steps=16, spacing="quadratic")]


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("settings", SAMPLERS, ids=lambda s: f"{s.name}-{s.steps}-{s.eta}")
def test_every_sampler_runs_v_and_x0_models_as_the_equivalent_eps_model(prediction, settings):
    cond, shape = torch.zeros(1, 2, 8, 8, 8), (1, 1, 8, 8, 8)
    reference = run_sampler(_model("eps"), cond, SeededNoise(5, shape), settings)
    out = run_sampler(_model(prediction), cond, SeededNoise(5, shape), settings)
    diff = (out - reference).abs().max().item()
    print(f"{prediction} vs eps, {settings.name}: max|diff| {diff:.3g}")
    assert diff <= TOL and out.abs().max() > 0.05  # float round-off only; not a constant image


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_repaint_runs_v_and_x0_models_as_the_equivalent_eps_model(prediction):
    cond, shape = torch.zeros(1, 2, 8, 8, 8), (1, 1, 8, 8, 8)
    keep = torch.ones(1, 1, 8, 8, 8)
    keep[..., 2:6, 2:6, 2:6] = 0
    inpaint = Inpainting(torch.full(shape, 0.2), keep, jump=5, resample=2)
    outs = [run_sampler(_model(p, 50), cond, SeededNoise(9, shape), SamplerSettings(), inpaint=inpaint)
            for p in ("eps", prediction)]
    assert (outs[0] - outs[1]).abs().max() <= 1e-4
    assert torch.equal(outs[1][keep.bool()], torch.full(shape, 0.2)[keep.bool()])  # kept region exact


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_dpmpp_with_v_and_x0_models_converges_to_the_closed_form(prediction):
    """The probability-flow ODE of Gaussian data is a rescaling: the exact output is known (as for eps)."""
    model, cond, shape = _model(prediction), torch.zeros(1, 2, 8, 8, 8), (1, 1, 8, 8, 8)
    abar = model.alphas_cumprod.double()
    var = abar * SCALE**2 + 1 - abar
    x_0 = SeededNoise(1, shape).draw().double() * torch.sqrt(var[0] / var[-1])
    exact = (torch.sqrt(abar[0]) * SCALE**2 * x_0 / var[0]).float()
    errors = {k: (run_sampler(model, cond, SeededNoise(1, shape), SamplerSettings("dpm++", steps=k, spacing="quadratic"))
                  - exact).abs().mean().item() for k in (16, 32)}
    print(f"{prediction}: dpm++ mean |x - exact| {errors}")
    assert errors[16] / errors[32] > 3.0 and errors[32] < 2e-3  # second order, and close


def test_training_targets_invert_to_the_noise():
    """predict_eps of a network that outputs its exact training target gives back the noise (all t)."""
    x0 = torch.rand(3, 1, 8, 8, 8) * 2 - 1
    noise, t = torch.randn(3, 1, 8, 8, 8), torch.tensor([0, 120, 249])
    for prediction in ("eps", "v", "x0"):
        model = GaussianDiffusion(TINY, 250, prediction=prediction)
        target = model.training_target(x0, t, noise)
        model.network = lambda x, cond, tt, target=target: target
        eps = model.predict_eps(model.q_sample(x0, t, noise), None, t)
        assert (eps - noise).abs().max() <= 2e-4, prediction


# ------------------------------------------------------------------------------------ stored options


def _weights(prediction: str) -> dict:
    torch.manual_seed(0)
    return GaussianDiffusion(TINY, 20, prediction=prediction).state_dict()


@pytest.mark.parametrize("landmarks", [None, ((0.0272, 0.6738),)])
def test_options_round_trip_through_checkpoint_and_export(tmp_path, landmarks):
    options = ModelOptions("v", "robust-volume", landmarks)
    state = _weights("v")
    ckpt = tmp_path / "run" / "model-5.pt"
    save_official_checkpoint(ckpt, state, state, 5, options)
    raw = torch.load(ckpt, weights_only=True)
    written = {"healthy_landmarks": "0.0272,0.6738"} if landmarks else {}
    assert raw[CHECKPOINT_KEY] == {"prediction": "v", "normalisation": "robust-volume", **written}
    diffusion, info = load_checkpoint(ckpt)
    assert diffusion.prediction == "v" and model_options(info) == options
    exported = tmp_path / "m.safetensors"
    entry = export_model(ckpt, exported, grid_xyz=(16, 16, 16), spacing_mm=(4, 4, 4))
    assert entry["prediction"] == "v" and entry["normalisation"] == "robust-volume"
    assert entry.get("healthy_landmarks") == written.get("healthy_landmarks")
    model = load_model(exported)
    assert model.diffusion.prediction == "v" and model.options == options
    # and through a run's config.json (lists), as TrainConfig writes and reads it
    config = TrainConfig(prediction="v", healthy_landmarks=landmarks or ())
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))).options == options
    assert ModelOptions.from_metadata(config.to_dict()) == options


def test_landmarks_for_another_number_of_channels_are_refused_at_load(tmp_path):
    """Two landmark pairs in a one-image (whole-head) model: a damaged file, refused before any workflow uses it."""
    state = _weights("v")
    options = ModelOptions("v", "robust-volume", ((0.03, 0.67), (0.1, 0.8)))
    save_official_checkpoint(tmp_path / "two.pt", state, state, 5, options)
    with pytest.raises(CheckpointError, match="landmarks for 2 image channel"):
        load_model(tmp_path / "two.pt", grid_xyz=(16, 16, 16), spacing_mm=(4, 4, 4))


def test_official_options_leave_the_official_format_untouched(tmp_path):
    state = _weights("eps")
    save_official_checkpoint(tmp_path / "a.pt", state, state, 1)
    assert set(torch.load(tmp_path / "a.pt", weights_only=True)) == {"step", "model", "ema"}
    diffusion, info = load_checkpoint(tmp_path / "a.pt")
    assert diffusion.prediction == "eps" and model_options(info).official


@pytest.mark.parametrize("entry", [{"prediction": "noise"}, {"prediction": 3}, "v",
                                   {"normalisation": "robust-volume", "healthy_landmarks": "0.7,0.1"},
                                   {"normalisation": "robust-volume", "healthy_landmarks": "0.1;x"},
                                   {"healthy_landmarks": "0.1,0.7"}])  # landmarks of the official normalisation
def test_unknown_or_malformed_options_are_refused(tmp_path, entry):
    state = _weights("eps")
    torch.save({"step": 1, "model": state, "ema": state, CHECKPOINT_KEY: entry}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="prediction|malformed|landmarks"):
        load_checkpoint(tmp_path / "bad.pt")


def test_train_config_records_options_and_refuses_eps_weighting_for_v():
    assert TrainConfig().options == ModelOptions("eps", "robust-volume")  # new runs: volume normalisation
    assert TrainConfig.from_dict({"family": "whole_head"}).normalisation == "official"  # runs from before
    with pytest.raises(InputError, match="weighting"):
        TrainConfig(prediction="v", weighting="truncated-snr").check()


def test_cosine_learning_rate_schedule_depends_on_the_step_alone():
    config = TrainConfig(lr=1e-3, steps=101, lr_schedule="cosine")
    assert config.lr_at(1) == pytest.approx(1e-3) and config.lr_at(101) == pytest.approx(1e-4)
    assert config.lr_at(51) == pytest.approx(0.55e-3)
    assert TrainConfig(lr=1e-3).lr_at(77) == 1e-3


# ------------------------------------------------------------------------------------- normalisation


def test_robust_volume_normalisation_keeps_the_slices_relative_brightness(tmp_path):
    """A volume whose axial slices differ in brightness: per-slice scaling flattens them (every slice
    reaches +1: the stripes), the volume normalisation keeps their order and ratio."""
    size = 16
    z = np.arange(size, dtype=np.float32)
    zz, yy, xx = np.meshgrid(z, z, z, indexing="ij")
    head = ((xx - 7.5) ** 2 + (yy - 7.5) ** 2 + (zz - 7.5) ** 2) <= 7.0**2
    rng = np.random.default_rng(0)
    image = np.where(head, (50.0 + 5.0 * zz) * (1 + 0.05 * rng.standard_normal(head.shape)), 0).astype(np.float32)
    (tmp_path / "m").mkdir(), (tmp_path / "i").mkdir()
    for array, folder in ((head.astype(np.uint8), "m"), (image, "i")):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing((4.0, 4.0, 4.0))
        sitk.WriteImage(volume, str(tmp_path / folder / "case.nii.gz"))
    grid, spacing = (16, 16, 16), (4.0, 4.0, 4.0)
    means = {}
    for normalisation in ("official", "robust-volume"):
        item, cond = PairedVolumeDataset(tmp_path / "m", tmp_path / "i", WHOLE_HEAD, grid, spacing,
                                         normalisation=normalisation)[0]
        inside = cond[0] > 0  # (D=Z, H, W)
        means[normalisation] = np.array([item[0][k][inside[k]].mean().item() for k in range(16) if inside[k].sum() > 20])
        assert item.min() == -1 and item.max() <= 1
        assert (item[0][~inside] == -1).all()  # background exactly -1
    volume_means, slice_means = means["robust-volume"], means["official"]
    assert np.all(np.diff(volume_means) > 0)  # brightness rises along Z as in the image
    trend = lambda m: np.polyfit(np.arange(len(m)), m, 1)[0]  # noqa: E731
    assert trend(volume_means) > 0.05 and abs(trend(slice_means)) < 0.5 * trend(volume_means)


def test_anchoring_puts_the_scans_healthy_tissue_on_the_models_landmarks():
    """A tumour-free 'scan' scaled the training way has its healthy tissue reach +1; anchored, its healthy
    median and 99.5th percentile land on the model's landmarks, and the map still inverts exactly."""
    rng = np.random.default_rng(3)
    volume = np.zeros((20, 20, 20))
    healthy = np.zeros(volume.shape, bool)
    healthy[3:17, 3:17, 3:17] = True
    volume[healthy] = rng.normal(500, 60, healthy.sum())
    plain = fit_intensity(volume, WHOLE_HEAD, "robust-volume", healthy)
    assert np.percentile(plain.forward(volume)[healthy], 99.5) == pytest.approx(1.0, abs=0.01)
    anchored = fit_intensity(volume, WHOLE_HEAD, "robust-volume", healthy, healthy, (0.03, 0.67))
    model = anchored.forward(volume)
    assert np.median(model[healthy]) == pytest.approx(0.03, abs=1e-4)
    assert np.percentile(model[healthy], 99.5) == pytest.approx(0.67, abs=1e-4)
    assert (model[~healthy] == -1).all()  # the background stays background (clipped)
    kept = healthy & (np.abs(model) < 1)  # all but the rare voxel beyond the model's range
    assert kept.sum() > 0.99 * healthy.sum()
    np.testing.assert_allclose(anchored.inverse(model[kept]), volume[kept], rtol=1e-5)
    # nothing to anchor on (no healthy voxels, or no spread): the training-time robust range
    for no_anchor in (np.zeros(volume.shape, bool), volume == 0):
        fallback = fit_intensity(volume, WHOLE_HEAD, "robust-volume", healthy, no_anchor, (0.03, 0.67))
        assert fallback == plain
