"""Sampler presets and fast samplers: the per-device default (preview on a CPU, exact on a GPU),
DPM-Solver++(3M) against the closed form on Gaussian data (eps, v and x0 models), RePaint on a fast
sampler's steps (kept region exact, any prediction target), and every sampling command taking the same
sampler options, printing its one line and recording the choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cli_helpers import head_labels, run_cli, write_mask
from MedDDPMSynthLib import GaussianDiffusion, SamplerSettings, SeededNoise
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.model.presets import (
    PREVIEW_PRECISION, PREVIEW_SAMPLER, PREVIEW_STEPS, choose_sampler, default_preset, native_precision,
    parse_sampler_spec, preset_settings, preview_metadata, recommended_preview, sampler_spec,
)
from MedDDPMSynthLib.model.repaint_fast import HARMONISE_DOWN_TO, fast_repaint_evaluations, fast_repaint_schedule
from MedDDPMSynthLib.model.sampling import Inpainting, repaint_schedule, run_sampler
from MedDDPMSynthLib.model.unet import UNetConfig

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)

SCALE = 0.2  # data ~ N(0, SCALE^2): every |x0| stays inside the clip at [-1, 1], so the ODE solution is exact
TINY = UNetConfig(3, 1, 32, (1, 2), 1, ())
# the preview's precision on this machine's CPU: bf16 where oneDNN runs it natively, else fp32 with a note
CPU_NATIVE = native_precision("cpu", PREVIEW_PRECISION)
CPU_PRECISION = PREVIEW_PRECISION if CPU_NATIVE else "fp32"
CPU_REASON = "the default on a CPU" + ("" if CPU_NATIVE else f" (in fp32: this CPU has no native {PREVIEW_PRECISION})")


# ------------------------------------------------------------------------------------ per-device default


@pytest.mark.parametrize("device,preset,name", [("cpu", "preview", PREVIEW_SAMPLER), ("cuda", "exact", "ddpm"),
                                                ("mps", "exact", "ddpm")])
def test_the_default_is_preview_on_a_cpu_and_exact_on_a_gpu(device, preset, name):
    """The one decision taken from the device (a GPU need not be present: only its type is read)."""
    choice = choose_sampler(torch.device(device), 250)
    assert default_preset(device) == preset and choice.preset == preset and choice.settings.name == name
    assert choice.settings == (SamplerSettings("ddpm") if preset == "exact" else
                               SamplerSettings(PREVIEW_SAMPLER, PREVIEW_STEPS, spacing="quadratic",
                                               precision=CPU_PRECISION))
    assert ("CPU" if device == "cpu" else "GPU") in choice.reason and choice.line().startswith(f"sampler: {preset} (")
    assert choice.record() == {"preset": preset, "reason": choice.reason}


def test_ddpm_and_exact_give_the_official_sampler_everywhere_and_options_override_a_preset():
    for device in ("cpu", "cuda"):
        for name in ("ddpm", "exact"):
            choice = choose_sampler(device, 250, name)
            assert choice.settings == SamplerSettings("ddpm") and choice.preset == "exact"
    custom = choose_sampler("cpu", 250, "dpm++", steps=25)
    assert custom.settings == SamplerSettings("dpm++", 25) and custom.preset is None
    more = choose_sampler("cuda", 250, "preview", steps=30, precision="fp32")
    assert (more.settings.name, more.settings.steps, more.settings.precision) == (PREVIEW_SAMPLER, 30, "fp32")
    assert more.preset == "preview+options"
    assert choose_sampler("cpu", 250, steps=20).settings.steps == 20  # --steps alone: the device's preset, fewer steps
    with pytest.raises(InputError, match="always runs all steps"):
        choose_sampler("cpu", 250, "exact", steps=10)
    with pytest.raises(InputError, match="unknown sampler"):
        choose_sampler("cpu", 250, "euler")


def test_a_model_recommends_its_own_preview_and_small_models_get_half_their_steps():
    meta = {"preview_sampler": "dpm++", "preview_steps": "20", "preview_spacing": "uniform"}
    assert preset_settings("preview", 250, meta) == SamplerSettings("dpm++", 20, precision=PREVIEW_PRECISION)
    tiny = SamplerSettings("ddim", 5, precision=PREVIEW_PRECISION)  # T = 10 test models: half their steps
    assert preset_settings("preview", 10) == tiny
    assert choose_sampler("cpu", 10).settings == SamplerSettings("ddim", 5, precision=CPU_PRECISION)


def test_a_recommended_stochastic_preview_keeps_its_eta_from_spec_to_metadata_to_sampler():
    """A model may recommend ancestral DDIM (eta 1) as its preview: the spec, the file's metadata, the preset
    and the printed line all carry the eta (it is what makes that sampler stochastic)."""
    settings = parse_sampler_spec("ddim:25:uniform:bf16:1")
    assert settings == SamplerSettings("ddim", 25, 1.0, "uniform", "bf16")
    meta = preview_metadata(settings, 250)
    assert meta["preview_eta"] == "1" and meta["preview_sampler"] == "ddim"
    assert preset_settings("preview", 250, meta) == settings
    assert recommended_preview(meta) == sampler_spec(settings) == "ddim:25:uniform:bf16:1"
    assert recommended_preview({}) is None and sampler_spec(parse_sampler_spec("dpm++3m:10:quadratic")) == "dpm++3m:10:quadratic:fp32"
    choice = choose_sampler("cpu", 250, precision="fp32", metadata=meta)
    assert choice.settings.eta == 1.0 and "ddim, 25 steps, uniform spacing, eta 1, fp32" in choice.line()
    assert choose_sampler("cpu", 250, eta=0.0, metadata=meta).settings.eta == 0.0  # --eta overrides it


@pytest.mark.parametrize("spec, message", [
    ("dpm++:25:uniform:bf16:1", "ETA applies to ddim only"), ("ddim:many", "whole number"),
    ("ddim:25:uniform:bf16:2", "eta must be between 0 and 1"), ("ddim:25:zigzag", "unknown step spacing"),
    ("ddim:25:uniform:bf16:1:x", "must read NAME"), ("euler:10", "unknown sampler"),
])
def test_a_bad_sampler_spec_is_refused_with_what_to_write(spec, message):
    with pytest.raises(InputError, match=message):
        parse_sampler_spec(spec)


def test_the_exact_sampler_is_not_a_preview_a_model_can_recommend():
    for spec in ("ddpm", "ddim"):
        with pytest.raises(InputError, match="fast sampler with a number of steps"):
            preview_metadata(parse_sampler_spec(spec), 250)
    with pytest.raises(InputError, match="between 1 and 250"):
        preview_metadata(parse_sampler_spec("ddim:400"), 250)


SAY_PREVIEW = """
import json
from MedDDPMSynthLib.model.presets import choose_sampler
choice = choose_sampler("cpu", 250)
print(json.dumps({"precision": choice.settings.precision, "line": choice.line()}))
"""


@pytest.mark.parametrize("isa", [None, "AVX2"])
def test_the_cpu_preview_runs_bf16_only_where_the_cpu_has_native_bf16(isa, monkeypatch):
    """oneDNN emulates bf16 on CPUs without AVX-512 BF16 / AMX (most laptops), where one network evaluation took
    over 100 times longer in bf16 than in fp32: there the preview runs in fp32 and its line says why. ONEDNN_MAX_CPU_ISA=AVX2
    makes this machine such a CPU (read when oneDNN starts, so in a new process)."""
    import subprocess
    import sys

    if isa:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    probe = "import torch; print(torch.ops.mkldnn._is_mkldnn_bf16_supported())"
    native = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    done = subprocess.run([sys.executable, "-c", SAY_PREVIEW], capture_output=True, text=True, check=True)
    said = json.loads(done.stdout)
    if isa == "AVX2":
        assert native == "False"
    if native == "True":
        assert said["precision"] == "bf16" and "native" not in said["line"]
    else:
        assert said["precision"] == "fp32"
        assert said["line"].startswith("sampler: preview (dpm++3m, 10 steps, quadratic spacing, fp32): the default on "
                                       "a CPU (in fp32: this CPU has no native bf16)")


# ------------------------------------------------------------------------------- DPM-Solver++(3M)


def _ideal_model(prediction: str, timesteps: int) -> GaussianDiffusion:
    """A model whose network is the Bayes-optimal one for Gaussian data, in its own prediction target."""
    model = GaussianDiffusion(TINY, timesteps, prediction=prediction)
    abar = model.alphas_cumprod

    def network(x, cond, t):
        a = abar[t].view(-1, 1, 1, 1, 1)
        var = a * SCALE**2 + 1 - a
        eps, x0 = torch.sqrt(1 - a) * x / var, torch.sqrt(a) * SCALE**2 * x / var
        return {"eps": eps, "v": torch.sqrt(a) * eps - torch.sqrt(1 - a) * x0, "x0": x0}[prediction]

    model.network = network  # the samplers reach the network only through predict_eps
    return model


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_dpmpp_3m_converges_at_third_order_to_the_closed_form(prediction):
    """The probability-flow ODE of Gaussian data is a rescaling, so the exact output is known. Doubling the
    steps must cut DPM-Solver++(3M)'s error about 8x (third order; 2M: 4x), and it must beat 2M."""
    model, cond, shape = _ideal_model(prediction, 1000), torch.zeros(1, 2, 8, 8, 8), (1, 1, 8, 8, 8)
    abar = model.alphas_cumprod.double()
    var = abar * SCALE**2 + 1 - abar
    x_0 = SeededNoise(1, shape).draw().double() * torch.sqrt(var[0] / var[-1])
    exact = (torch.sqrt(abar[0]) * SCALE**2 * x_0 / var[0]).float()

    def error(name, steps):
        out = run_sampler(model, cond, SeededNoise(1, shape), SamplerSettings(name, steps, spacing="quadratic"))
        return (out - exact).abs().mean().item()

    m3 = {k: error("dpm++3m", k) for k in (16, 32, 64)}
    m2 = error("dpm++", 32)
    print(f"{prediction}: dpm++3m mean |x - exact| {m3}, dpm++ at 32 steps {m2:.3g}")
    assert m3[16] / m3[32] > 6 and m3[32] / m3[64] > 6
    assert m3[32] < 0.8 * m2 and m3[64] < 2e-4


def test_dpmpp_3m_runs_a_real_network_reproducibly(tiny_model, tiny_io):
    labels = tiny_io["label_volume_xyz"][::2, ::2, ::2]
    calls = []
    settings = SamplerSettings("dpm++3m", 5, spacing="quadratic")
    images = tiny_model.generate(labels, seed=3, sampler=settings, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(k, 5) for k in range(1, 6)] and np.isfinite(images).all() and images.std() > 0
    assert np.array_equal(images, tiny_model.generate(labels, seed=3, sampler=settings))
    with pytest.raises(InputError, match="at least 2 steps"):
        SamplerSettings("dpm++3m", 1).check(10)


# --------------------------------------------------------------------------- RePaint on fast steps


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_fast_repaint_keeps_the_region_exactly_and_runs_any_prediction_target(prediction):
    cond, shape = torch.zeros(1, 2, 8, 8, 8), (1, 1, 8, 8, 8)
    keep = torch.ones(1, 1, 8, 8, 8)
    keep[..., 2:6, 2:6, 2:6] = 0
    inpaint = Inpainting(torch.full(shape, 0.2), keep, jump=10, resample=3)
    settings = SamplerSettings("dpm++3m", 25, spacing="quadratic")
    calls = []
    outs = [run_sampler(_ideal_model(p, 250), cond, SeededNoise(9, shape), settings, inpaint=inpaint,
                        progress=(lambda d, t: calls.append((d, t))) if p == "eps" else None)
            for p in ("eps", prediction)]
    assert (outs[0] - outs[1]).abs().max() <= 1e-4
    assert torch.equal(outs[1][keep.bool()], torch.full(shape, 0.2)[keep.bool()])  # kept region exact
    assert outs[1][~keep.bool()].std() > 0.01  # regenerated, not copied
    evaluations = fast_repaint_evaluations(inpaint, 250, 25, "quadratic")
    official = sum(1 for a, _ in repaint_schedule(250, 10, 3) if a == "denoise")
    assert calls[-1] == (evaluations, evaluations) and len(calls) == evaluations
    assert official == 730 and evaluations <= 75  # one tenth of the official run's evaluations


@pytest.mark.parametrize("steps, spacing", [(10, "quadratic"), (25, "uniform"), (50, "quadratic")])
def test_fast_repaint_harmonises_only_above_the_floor(steps, spacing):
    """Jumps back (re-noising) only from levels at t >= 0.15 T; below it one pass down to t = 0 (re-noising at
    low noise drifted the demo model's moved tumour dark, see repaint_fast). Every level is denoised, the
    levels above the floor ``resample`` times."""
    inpaint = Inpainting(torch.zeros(1, 1, 8, 8, 8), torch.ones(1, 1, 8, 8, 8), jump=10, resample=3)
    ascending, actions = fast_repaint_schedule(inpaint, 250, steps, spacing)
    floor = next(k for k, t in enumerate(ascending) if t >= HARMONISE_DOWN_TO * 250)
    renoised = {k for action, k in actions if action == "renoise"}
    assert renoised and min(renoised) >= floor + 1  # a jump from level floor re-noises floor -> floor + 1 first
    denoised = [k for action, k in actions if action == "denoise"]
    assert sorted(set(denoised)) == list(range(steps))
    assert all(denoised.count(k) == 1 for k in range(floor))
    assert max(denoised.count(k) for k in range(floor, steps)) == 3
    assert fast_repaint_evaluations(inpaint, 250, steps, spacing) == len(denoised)
    # the schedule without the floor (down_to 0) re-noises down to the last level, as the official RePaint does
    assert min(k for a, k in fast_repaint_schedule(inpaint, 250, steps, spacing, down_to=0)[1] if a == "renoise") == 1


# ------------------------------------------------------------------- every command, one set of options


def _scan(tmp_path):
    labels = head_labels(size=(20, 20, 16), spacing=(8, 8, 8), tumour_radius_mm=20)
    values = np.where(labels > 0, 600, 0).astype(np.int16)
    scan = sitk.GetImageFromArray(values.transpose(2, 1, 0).copy())
    scan.SetSpacing((8.0, 8.0, 8.0))
    sitk.WriteImage(scan, str(tmp_path / "scan.nii.gz"))
    tumour = sitk.GetImageFromArray((labels == 2).astype(np.uint8).transpose(2, 1, 0).copy())
    tumour.CopyInformation(scan)
    sitk.WriteImage(tumour, str(tmp_path / "tumour.nii.gz"))


def test_every_sampling_command_takes_the_sampler_options_and_records_the_choice(tmp_path, tiny_home, capsys,
                                                                                 monkeypatch):
    monkeypatch.setenv("MEDDDPMSYNTH_HOME", str(tiny_home))
    mask = write_mask(tmp_path / "mask.nii.gz", head_labels(size=(20, 20, 16), spacing=(8, 8, 8)), spacing=(8, 8, 8))
    base = ["--model", "tiny16", "--device", "cpu", "--quiet"]

    code, out, err = run_cli(["generate", "--mask", mask, "-o", tmp_path / "default", *base[:-1]], capsys)
    lines = [line for line in out.splitlines() if line.startswith("sampler: ")]
    assert code == 0, err
    assert lines == [f"sampler: preview (ddim, 5 steps, uniform spacing, {CPU_PRECISION}): {CPU_REASON}; "
                                   "--sampler exact (or ddpm) for the official sampler"]
    prov = json.loads((tmp_path / "default" / "provenance.json").read_text())["sampler"]
    assert (prov["name"], prov["steps"], prov["preset"], prov["reason"]) == ("ddim", 5, "preview", CPU_REASON)

    code, _, err = run_cli(["generate", "--mask", mask, "-o", tmp_path / "exact", *base, "--sampler", "ddpm"], capsys)
    prov = json.loads((tmp_path / "exact" / "provenance.json").read_text())["sampler"]
    assert code == 0 and (prov["name"], prov["steps"], prov["preset"]) == ("ddpm", 10, "exact")

    previous = next((tmp_path / "exact").glob("*_t1c.nii.gz"))
    code, _, err = run_cli(["generate", "--mask", mask, "-o", tmp_path / "keep", *base, "--keep", previous,
                            "--sampler", "dpm++3m", "--steps", "4", "--harmonize", "2"], capsys)
    prov = json.loads((tmp_path / "keep" / "provenance.json").read_text())
    assert code == 0, err
    assert prov["sampler"]["name"] == "dpm++3m" and prov["sampler"]["reason"] == "--sampler dpm++3m"
    assert prov["local_regeneration"]["harmonize"] == 2

    _scan(tmp_path)
    scan = ["--model", "tiny16", "--device", "cpu", "--quiet"]
    code, _, err = run_cli(["insert", "--scan", tmp_path / "scan.nii.gz", "--tumor", tmp_path / "tumour.nii.gz",
                            "-o", tmp_path / "ins", *scan, "--sampler", "ddim", "--steps", "3", "--harmonize", "1"], capsys)
    record = json.loads((tmp_path / "ins" / "insertion.json").read_text())["sampler"]
    assert code == 0, err
    assert (record["name"], record["steps"], record["preset"], record["reason"]) == ("ddim", 3, None, "--sampler ddim")

    code, _, err = run_cli(["anonymize", tmp_path / "scan.nii.gz", "-o", tmp_path / "anon", *scan,
                            "--sampler", "preview", "--precision", "fp32"], capsys)
    prov = json.loads((tmp_path / "anon" / "provenance.json").read_text())["sampler"]
    assert code == 0, err
    assert (prov["name"], prov["precision"], prov["preset"]) == ("ddim", "fp32", "preview+options")

    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "case0.nii.gz").write_bytes(mask.read_bytes())
    code, out, err = run_cli(["dataset", "--masks", masks, "-o", tmp_path / "ds", "--model", "tiny16", "--device", "cpu",
                              "--quiet", "--sampler", "exact"], capsys)
    record = json.loads(next((tmp_path / "ds" / "provenance").glob("*.json")).read_text())["sampler"]
    assert code == 0, err
    assert (record["name"], record["preset"], record["reason"]) == ("ddpm", "exact", "--sampler exact")
    assert "sampler: exact (ddpm, all steps, fp32): --sampler exact" in out


def test_the_slicer_and_browser_fronts_default_to_the_engine_presets():
    from MedDDPMSynthLib.model.api import resolve_device
    from MedDDPMSynthSlicerLib.jobs import GenerationSettings, default_preset_label

    assert default_preset_label("cpu") == "Preview"
    preview, exact = GenerationSettings.preset("Preview", 250), GenerationSettings.preset("Exact", 250)
    assert (preview.sampler, preview.steps, preview.spacing) == (PREVIEW_SAMPLER, PREVIEW_STEPS, "quadratic")
    assert preview.arguments()[-2:] == ["--sampler", "preview"] and exact.arguments()[-2:] == ["--sampler", "exact"]
    shorter = GenerationSettings.preset("Preview", 250, steps=5).arguments()  # no longer the preset itself
    assert shorter[shorter.index("--sampler") + 1] == PREVIEW_SAMPLER and shorter[shorter.index("--steps") + 1] == "5"
    # a model that recommends its own preview: options given on top change that preview, eta included
    own = GenerationSettings.preset("Preview", 250, "ddim:25:uniform:bf16:1")
    assert (own.sampler, own.steps, own.eta, own.engine_preset) == ("ddim", 25, 1.0, "preview")
    more = GenerationSettings.preset("Preview", 250, "ddim:25:uniform:bf16:1", steps=40).arguments()
    assert [more[more.index(flag) + 1] for flag in ("--sampler", "--steps", "--eta", "--step-spacing")] == \
        ["ddim", "40", "1.0", "uniform"]
    from MedDDPMSynthWeb.panel import DEFAULTS, SAMPLERS

    assert DEFAULTS["synth_sampler"] == default_preset(resolve_device("auto")) and SAMPLERS[:2] == ("preview", "exact")
