"""The bundled demo model: the file is the one its card describes, it loads as "demo", and it draws a
brain that follows the example mask (tumour where painted)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedDDPMSynthLib.model.checkpoint import file_sha256
from MedDDPMSynthLib.training.evaluation import stripe_index, tumour_contrast
from MedDDPMSynthLib.store.models import BUNDLED_DEMO, BUNDLED_NOTE, DEMO_ENV, demo_entry, load_named_model
from MedDDPMSynthLib.workflows.pipeline import GenerateRequest, generate_files
from MedDDPMSynthLib.model.presets import choose_sampler, preset_settings

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
    # its own preview (the card's; models export --preview): ancestral DDIM, whose anatomy beat the built-in
    # deterministic preview's without the speckle (bench_realism.py, the card)
    assert entry["preview"] == bundled["preview"] and bundled["preview"].startswith("ddim:") and bundled["preview"].endswith(":1")


def test_it_draws_a_brain_with_the_tumour_where_the_mask_says(bundled, tmp_path):
    """The README's main command (no sampler flags: the CPU default, the preview preset; seed 0) on the example
    mask: a black background, a brain, a tumour brighter than the brain around it (as in the demo data), no
    stripes along z."""
    model = load_named_model("demo")
    assert model.options.prediction == bundled["prediction"] == "v"
    settings = choose_sampler("cpu", model.timesteps, metadata=model.info.metadata).settings
    preview = preset_settings("preview", model.timesteps, model.info.metadata)  # in fp32 on a CPU without native bf16
    assert (settings.name, settings.steps, settings.spacing, settings.eta) == \
        (preview.name, preview.steps, preview.spacing, preview.eta)
    assert settings.name != "ddpm"
    request = GenerateRequest(EXAMPLE, tmp_path / "synth.nii.gz", seed=0, sampler=settings)
    result = generate_files(request, model)
    image = sitk.ReadImage(str(result.files[0]))
    labels = sitk.ReadImage(str(EXAMPLE))
    assert image.GetSize() == labels.GetSize() and image.GetOrigin() == labels.GetOrigin()
    values, mask = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels)
    background, brain = values[mask == 0], values[mask == 1].mean()
    stripes = stripe_index(values.transpose(2, 1, 0), mask.transpose(2, 1, 0) > 0)
    contrast = tumour_contrast(image, labels, tumour_labels=(2,), tissue_label=1, shell_mm=6.0)
    print(f"background {background.mean():.3f} +- {background.std():.3f}, brain {brain:.3f}, stripe index "
          f"{stripes:.2f}, tumour {contrast}")
    # measured for the shipped file: background -0.988 +- 0.036, brain 0.17, stripes 1.09, Cohen's d +2.22.
    # The eps file before it gave -0.66 +- 0.26, stripes 1.62 and d -1.22 (a dark tumour): each bound fails it.
    assert background.mean() <= -0.9 and background.std() <= 0.1 and brain > background.mean() + 0.6
    assert stripes < 1.5
    assert contrast["cohens_d"] > 0.15


def test_a_moved_tumour_regenerated_with_the_cpu_default_stays_bright(bundled):
    """Move the example's tumour 4 voxels and re-generate only around it (RePaint with the CPU default, the
    preview preset): the moved tumour stands out from the brain at least 0.72 times as much as in a free
    generation of the edited mask, and everything outside the region is kept exactly. Before the fast RePaint
    stopped harmonising at low noise, the moved tumour drifted dark (see repaint_fast): 0.63 times the free
    contrast with the phase-5 file, darker than the brain with the phase-4 file."""
    from scipy import ndimage

    from MedDDPMSynthLib.workflows.pipeline import prepare_labels

    model = load_named_model("demo")
    settings = choose_sampler("cpu", model.timesteps, metadata=model.info.metadata).settings
    _, labels, _, _ = prepare_labels(GenerateRequest(mask=EXAMPLE, output=EXAMPLE), model)
    previous = model.generate(labels, seed=0, sampler=settings)[0]
    head, tumour = labels >= 1, labels >= 2
    moved = np.roll(tumour, 4, axis=0) & head
    new_labels = np.where(head, 1, 0).astype(labels.dtype)
    new_labels[moved] = 2
    region = ndimage.binary_dilation(tumour | moved, iterations=2)
    image = model.generate(new_labels, seed=1, sampler=settings, keep_image=previous, regenerate=region)[0]
    free = model.generate(new_labels, seed=1, sampler=settings)[0]
    brain = head & ~region
    edited = image[0][moved].mean() - image[0][brain].mean()
    fresh = free[0][moved].mean() - free[0][brain].mean()
    print(f"moved tumour - brain: re-generated {edited:.3f}, free generation {fresh:.3f}")
    # measured for the shipped file (its preview: RePaint on 25 ancestral steps): 0.45 against 0.51 (0.88 of it)
    assert fresh > 0.2 and edited > 0.72 * fresh
    assert np.array_equal(image[:, ~region], previous[:, ~region])


def test_a_tumour_inserted_into_the_real_mni_t1_is_brighter_than_the_tissue_it_replaces(bundled):
    """The example's tumour drawn on the real MNI152 T1 (1 mm, no tumour) and inserted with the CPU default:
    the synthetic tumour is brighter than the white matter it replaces, as the demo data's tumours are, and
    the regenerated rim around it keeps the scan's brightness. Scaled the way the training images were (their
    tumour inside the percentiles), the scan's white matter landed where the model's tumours sit: the tumour
    came out darker than the tissue it replaced (0.93 of it) and the rim 9 % dark. The model's healthy-tissue
    landmarks (model_options.py) fix that."""
    from MedDDPMSynthLib.data.demo_data import TEMPLATE_FILES, find_template_dir
    from MedDDPMSynthLib.workflows.insertion import insert_tumour

    model = load_named_model("demo")
    assert model.options.healthy_landmarks is not None
    settings = choose_sampler("cpu", model.timesteps, metadata=model.info.metadata).settings
    scan = sitk.ReadImage(str(find_template_dir() / TEMPLATE_FILES["t1"]))
    tumour = sitk.Resample(sitk.ReadImage(str(EXAMPLE)) == 2, scan, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    result = insert_tumour(model, [scan], tumour, seed=5, sampler=settings)
    assert result.record["intensity"]["healthy_landmarks"] == [list(model.options.healthy_landmarks[0])]
    before, after = sitk.GetArrayFromImage(scan).astype(float), sitk.GetArrayFromImage(result.images[0]).astype(float)
    inside = sitk.GetArrayFromImage(tumour) > 0
    rim = (sitk.GetArrayFromImage(sitk.BinaryDilate(tumour, [4, 4, 4])) > 0) & ~inside
    brightening, rim_change = after[inside].mean() / before[inside].mean(), after[rim].mean() / before[rim].mean()
    print(f"tumour {after[inside].mean():.1f} where the scan had {before[inside].mean():.1f} ({brightening:.2f}); "
          f"rim {after[rim].mean():.1f} vs {before[rim].mean():.1f} ({rim_change:.2f})")
    # measured for the shipped file: tumour 1.09 times the tissue it replaced, rim 1.00 times the scan's
    assert brightening > 1.04
    assert abs(rim_change - 1) < 0.07
    region = sitk.GetArrayFromImage(result.region) > 0
    assert np.array_equal(after[~region], before[~region])
