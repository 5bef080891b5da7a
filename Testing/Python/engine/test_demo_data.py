"""Demo data builder: template loading, synthetic tumours, augmentation and the resumable dataset writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedDDPMSynthLib.data import demo_data
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.families import WHOLE_HEAD
from MedDDPMSynthLib.domain.families import WHOLE_HEAD
from MedDDPMSynthLib.domain.labels import to_official

GRID = (56, 64, 56)  # 3 mm: the whole brain fits, and a case takes a fraction of a second
SPACING = (3.0, 3.0, 3.0)
SUB = demo_data.SUBSTRUCTURES


@pytest.fixture(scope="module")
def template():
    try:
        demo_data.find_template_dir()
    except InputError as error:
        pytest.skip(f"MNI152 template not available ({error})")
    return demo_data.load_template()


def pair(template, seed, **kwargs):
    mask, image, info = demo_data.make_pair(template, np.random.default_rng(seed), GRID, SPACING, **kwargs)
    arrays = [sitk.GetArrayFromImage(x) for x in (mask, image, info["substructures"])]
    return (mask, image, info, *arrays)


def shell(region: np.ndarray, brain: np.ndarray, voxels: int = 2) -> np.ndarray:
    """Brain voxels within ``voxels`` of ``region`` but outside the whole lesion."""
    grown = sitk.BinaryDilate(sitk.GetImageFromArray(region.astype(np.uint8)), [voxels] * 3, sitk.sitkBall)
    return (sitk.GetArrayFromImage(grown) > 0) & brain


def test_missing_template_says_how_to_install(tmp_path):
    with pytest.raises(InputError, match="pip install"):
        demo_data.find_template_dir(tmp_path)


def test_template_brain_mask_is_plausible(template):
    volume_l = sitk.GetArrayViewFromImage(template.brain).sum() * np.prod(template.brain.GetSpacing()) / 1e6
    assert 1.0 < volume_l < 2.0
    t1 = sitk.GetArrayViewFromImage(template.t1)
    white = sitk.GetArrayViewFromImage(template.wm) > 0.8
    assert np.median(t1[white]) == pytest.approx(1.0)


def test_pair_grid_labels_and_tumour_inside_brain(template):
    mask, image, info, labels, pixels, sub = pair(template, 0)
    for item in (mask, image, info["substructures"]):
        assert item.GetSize() == GRID
        assert item.GetSpacing() == SPACING
        assert item.GetDirection() == WHOLE_HEAD.direction
        assert item.GetOrigin() == mask.GetOrigin()
    assert mask.GetPixelID() == sitk.sitkUInt8 and image.GetPixelID() == sitk.sitkFloat32
    assert set(np.unique(labels)) == {0, 1, 2}
    assert 1.0 < (labels > 0).sum() * np.prod(SPACING) / 1e6 < 2.6  # brain, with up to +-8 % scaling per axis
    to_official(mask, WHOLE_HEAD)  # raises if a tumour component lies outside the brain
    centroid = np.argwhere(labels == 2).mean(0).round().astype(int)
    assert labels[tuple(centroid)] > 0
    # sub-structures: 1..3 exactly where the tumour is, 4 exactly where the brain is
    np.testing.assert_array_equal(np.isin(sub, (1, 2, 3)), labels == 2)
    np.testing.assert_array_equal(sub == SUB["brain"], labels == 1)
    # skull-stripped, scaled image: 0 outside the mask, [0, 1] inside
    assert pixels[labels == 0].max() == 0 and pixels.max() == pytest.approx(1.0) and pixels.min() >= 0


@pytest.mark.parametrize("radius", [6.0, 12.0, 25.0])
def test_tumour_size_follows_the_requested_radius(template, radius):
    for seed in range(3):
        _, _, info, labels, _, _ = pair(template, seed, radius_mm=(radius, radius), augment=False)
        equivalent = (3 * (labels == 2).sum() * np.prod(SPACING) / (4 * np.pi)) ** (1 / 3)
        assert info["lesion"]["radius_mm"] == radius
        # wobble and voxel quantisation vs. clipping to the brain and oedema kept to white matter
        assert 0.5 * radius <= equivalent <= 1.3 * radius, (seed, equivalent)


def test_same_seed_same_pair_other_seed_other_pair(template):
    first, second, other = pair(template, 5), pair(template, 5), pair(template, 6)
    for a, b in zip(first[3:], second[3:]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[3], other[3])
    assert not np.array_equal(first[4], other[4])


def test_augmentation_moves_anatomy_but_keeps_image_and_mask_aligned(template):
    for seed in (1, 2, 3):
        plain, augmented = pair(template, seed, augment=False), pair(template, seed)
        assert plain[2]["lesion"] == augmented[2]["lesion"]  # same tumour, drawn before augmenting
        brain_plain, brain_aug = plain[3] > 0, augmented[3] > 0
        dice = 2 * (brain_plain & brain_aug).sum() / (brain_plain.sum() + brain_aug.sum())
        assert 0.7 < dice < 0.99
        for _, _, _, labels, pixels, sub in (plain, augmented):
            brain = labels == 1
            enhancing = sub == SUB["enhancing"]
            assert pixels[enhancing].mean() > pixels[shell(labels == 2, brain)].mean() + 0.1  # bright rim
            necrotic = sub == SUB["necrotic"]
            if necrotic.sum() >= 10:
                assert pixels[necrotic].mean() < pixels[enhancing].mean() - 0.2  # dark core inside the rim


def test_build_dataset_writes_pairs_and_resumes(template, tmp_path):
    out = tmp_path / "demo"
    calls = []
    written = demo_data.build_dataset(out, 2, 11, GRID, SPACING, template=template,
                                      progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    assert [p.name for p in written] == ["case_0000.nii.gz", "case_0001.nii.gz"]
    for folder in ("masks", "images", "substructures"):
        assert sorted(p.name for p in (out / folder).iterdir()) == ["case_0000.nii.gz", "case_0001.nii.gz"]
    meta = json.loads((out / "dataset.json").read_text())
    assert (meta["n"], meta["seed"], meta["grid_xyz"], meta["spacing_mm"]) == (2, 11, list(GRID), list(SPACING))
    assert "McGill" in meta["template"]["licence"] and len(meta["template"]["sha256"]) == 3
    # same as make_pair with the case's own generator
    mask, image, _ = demo_data.make_pair(template, np.random.default_rng([11, 1]), GRID, SPACING)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "images/case_0001.nii.gz"))),
                                  sitk.GetArrayFromImage(image))
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert demo_data.build_dataset(out, 2, 11, GRID, SPACING) == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_build_dataset_refuses_other_settings_in_the_same_folder(template, tmp_path):
    demo_data.build_dataset(tmp_path, 1, 3, GRID, SPACING, template=template)
    with pytest.raises(InputError, match="other settings"):
        demo_data.build_dataset(tmp_path, 1, 4, GRID, SPACING, template=template)
    assert demo_data.build_dataset(tmp_path, 2, 3, GRID, SPACING, template=template)[0].name == "case_0001.nii.gz"
    assert json.loads((tmp_path / "dataset.json").read_text())["n"] == 2  # extended, not rebuilt
