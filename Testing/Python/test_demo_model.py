"""The bundled demo model: the file is the one its card describes, it loads as "demo", and it draws a
brain that follows the example mask (tumour where painted)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedDDPMSynthLib import SamplerSettings
from MedDDPMSynthLib.checkpoint import file_sha256
from MedDDPMSynthLib.evaluation import tumour_contrast
from MedDDPMSynthLib.models import BUNDLED_DEMO, BUNDLED_NOTE, DEMO_ENV, demo_entry, load_named_model
from MedDDPMSynthLib.pipeline import GenerateRequest, generate_files

from conftest import REPO

CARD = REPO / "MedDDPMSynth" / "Resources" / "Models" / "demo_model.json"
EXAMPLE = REPO / "MedDDPMSynth" / "Resources" / "Examples" / "demo_mask.nii.gz"


@pytest.fixture()
def bundled(monkeypatch):
    """"demo" as a user gets it (the suite otherwise points it at the tiny model)."""
    monkeypatch.delenv(DEMO_ENV, raising=False)
    return json.loads(CARD.read_text())


def test_the_file_matches_its_card_and_loads_as_demo(bundled):
    assert BUNDLED_DEMO.is_file() and BUNDLED_DEMO.stat().st_size <= 25 * 2**20
    assert file_sha256(BUNDLED_DEMO) == bundled["sha256"]
    entry = demo_entry()
    assert entry["available"] and entry["note"] == BUNDLED_NOTE and entry["sha256"] == bundled["sha256"]
    assert entry["family"] == "whole_head" and entry["container"] == "safetensors"
    model = load_named_model("demo")
    assert list(model.grid_xyz) == bundled["grid_xyz"] and list(model.spacing_mm) == bundled["spacing_mm"]
    assert model.timesteps == bundled["timesteps"]


def test_it_draws_a_brain_with_the_tumour_where_the_mask_says(bundled, tmp_path):
    model = load_named_model("demo")
    request = GenerateRequest(EXAMPLE, tmp_path / "synth.nii.gz", seed=0, sampler=SamplerSettings("dpm++", 10))
    result = generate_files(request, model)
    image = sitk.ReadImage(str(result.files[0]))
    labels = sitk.ReadImage(str(EXAMPLE))
    assert image.GetSize() == labels.GetSize() and image.GetOrigin() == labels.GetOrigin()
    values, mask = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels)
    background, brain = values[mask == 0].mean(), values[mask == 1].mean()
    print(f"background {background:.3f}, brain {brain:.3f}")
    # a bright brain on a dark background (the demo model is young: its background is not yet flat -1)
    assert background < -0.4 and brain > background + 0.6
    contrast = tumour_contrast(image, labels, tumour_labels=(2,), tissue_label=1, shell_mm=6.0)
    print("tumour contrast", contrast)
    # the tumour differs from the brain around it (Cohen's d -0.35 for this seed at 3000 steps, -0.55 at
    # 6000, -0.67 for the fine-tuned file that ships; raise the bound as the demo model improves)
    assert abs(contrast["cohens_d"]) > 0.5
