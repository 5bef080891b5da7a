"""Geometry layer: reading masks, mapping them onto the model grid and bringing images back exactly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from MedDDPMSynthLib.domain import families
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.geometry import (
    GridMapping,
    ModelGrid,
    plan_official,
    plan_physical,
)
from MedDDPMSynthLib.io.mask_io import read_mask

REPO = Path(__file__).resolve().parents[3]
OFFICIAL_MASK = REPO / "Testing" / "Data" / "official" / "wholehead_synth_mask.nii.gz"
LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
WHOLE_HEAD = families.WHOLE_HEAD.direction


def samples_dir() -> Path:
    """The official Med-DDPM example masks, kept with the tests (see that folder's README for provenance)."""
    return REPO / "Testing" / "Data" / "med-ddpm-samples"


def rotation(ax_deg: float, ay_deg: float) -> tuple[float, ...]:
    """Oblique direction: rotation about x then about y."""
    a, b = np.radians(ax_deg), np.radians(ay_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return tuple((ry @ rx).ravel())


OBLIQUE = rotation(20, 20)


def make_image(labels_xyz, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=LPS) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(labels_xyz).transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def xyz(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def write_and_read(image: sitk.Image, path: Path) -> sitk.Image:
    sitk.WriteImage(image, str(path))
    return read_mask(path)


def synthetic_head(size, spacing, direction, origin=(-90.0, -100.0, -80.0)) -> sitk.Image:
    """Ellipsoid head (label 1) with a tumour ball (label 2), both aligned with the scanner grid."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1).astype(float)
    local = grid * np.asarray(spacing)  # mm along the image axes
    centre = (np.asarray(size) - 1) * np.asarray(spacing) / 2
    head = (((local - centre) / np.asarray([70.0, 85.0, 70.0])) ** 2).sum(-1) <= 1
    tumour = np.linalg.norm(local - centre - np.asarray([25.0, 20.0, 15.0]), axis=-1) <= 15
    labels = head.astype(np.uint8) + (tumour & head).astype(np.uint8)
    return make_image(labels, spacing, origin, direction)


def physical_centroid(image: sitk.Image, selected_xyz: np.ndarray) -> np.ndarray:
    mean_index = np.argwhere(selected_xyz).mean(axis=0)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(mean_index.tolist()))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def assert_same_grid(image: sitk.Image, reference: sitk.Image) -> None:
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)


# ------------------------------------------------------------------------------ output grid round trip

GRID_CASES = {
    "lps": dict(size=(60, 64, 50), spacing=(2.0, 2.0, 2.0), direction=LPS),
    "ras": dict(size=(60, 64, 50), spacing=(2.0, 2.0, 2.0), direction=RAS),
    "oblique": dict(size=(70, 70, 60), spacing=(2.5, 2.5, 2.5), direction=OBLIQUE),
    "anisotropic": dict(size=(150, 130, 50), spacing=(0.9, 1.2, 3.0), direction=LPS),
    "odd": dict(size=(97, 113, 61), spacing=(1.7, 1.7, 2.6), direction=RAS),
}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("case", sorted(GRID_CASES))
def test_image_to_input_returns_exactly_the_input_grid(tmp_path, case, suffix):
    mask = write_and_read(synthetic_head(origin=(12.3, -45.6, 7.8), **GRID_CASES[case]), tmp_path / f"m{suffix}")
    mapping = plan_physical(mask, (32, 32, 32), (6.0, 6.0, 6.0), WHOLE_HEAD)
    labels = mapping.labels_to_model(mask)
    assert labels.shape == (32, 32, 32) and labels.dtype.kind in "iu"
    out = mapping.image_to_input(labels.astype(np.float32), background=-1.0)
    assert out.GetPixelID() == sitk.sitkFloat32
    assert_same_grid(out, mask)
    # the metadata is copied, not recomputed: bit-identical
    assert out.GetOrigin() == mask.GetOrigin() and out.GetDirection() == mask.GetDirection()


# ------------------------------------------------------------------------------ physical correctness


def test_tumour_stays_where_it_is_in_physical_space(tmp_path):
    mask = write_and_read(synthetic_head((180, 200, 60), (0.9, 1.2, 3.0), OBLIQUE), tmp_path / "head.nii.gz")
    mapping = plan_physical(mask, (128, 128, 128), (1.5, 1.5, 1.5), WHOLE_HEAD)
    assert mapping.cropped_fraction == 0.0
    model_labels = mapping.labels_to_model(mask)
    assert set(np.unique(model_labels)) == {0, 1, 2}

    input_tumour = xyz(mask) == 2
    before = physical_centroid(mask, input_tumour)
    after = physical_centroid(mapping.model_grid.reference_image(), model_labels == 2)
    assert np.linalg.norm(after - before) < 1.5  # within one model voxel

    back = xyz(mapping.image_to_input(model_labels.astype(np.float32), background=0.0))
    assert dice(back > 1.5, input_tumour) > 0.8
    assert dice(back > 0.5, xyz(mask) > 0) > 0.9


def test_example_whole_head_mask_overlays_itself():
    mask = read_mask(samples_dir() / "whole_head" / "mask" / "sample_0.nii.gz")
    mapping = plan_physical(mask, (128, 128, 128), (1.5, 1.5, 1.5), WHOLE_HEAD)
    assert mapping.outside_voxels(mask, [2]) == 0
    back = xyz(mapping.image_to_input(mapping.labels_to_model(mask).astype(np.float32), background=0.0))
    # same spacing and direction as the model: whole-voxel shift only, so the round trip is lossless
    assert np.array_equal(back, xyz(mask))


def test_canonical_directions_match_the_official_examples():
    folder = samples_dir()
    whole_head = sitk.ReadImage(str(folder / "whole_head" / "mask" / "sample_0.nii.gz"))
    brats = sitk.ReadImage(str(folder / "brats2021" / "seg" / "BraTS2021_00529_seg.nii.gz"))
    assert whole_head.GetDirection() == families.WHOLE_HEAD.direction
    assert brats.GetDirection() == families.BRATS.direction
    assert (whole_head.GetSize(), whole_head.GetSpacing()) == ((128, 128, 128), (1.5, 1.5, 1.5))
    assert (brats.GetSize(), brats.GetSpacing()) == ((192, 192, 144), (1.0, 1.0, 1.0))


# ------------------------------------------------------------------------------ centring and cropping


def grid_centre(grid: ModelGrid) -> np.ndarray:
    middle = ((np.asarray(grid.size_xyz) - 1) / 2).tolist()
    return np.asarray(grid.reference_image().TransformContinuousIndexToPhysicalPoint(middle))


@pytest.mark.parametrize("direction", [LPS, RAS, OBLIQUE])
def test_grid_is_centred_on_foreground_bounding_box(direction):
    labels = np.zeros((60, 50, 40), np.uint8)
    labels[10:31, 5:16, 20:39] = 1  # index box [10, 30] x [5, 15] x [20, 38]
    labels[40:45, 30:35, 2:6] = 2
    mask = make_image(labels, (1.0, 2.0, 3.0), (5.0, -7.0, 11.0), LPS)
    for wanted, (low, high) in ((None, ([10, 5, 2], [44, 34, 38])), ([1], ([10, 5, 20], [30, 15, 38]))):
        mapping = plan_physical(mask, (16, 16, 16), (4.0, 4.0, 4.0), direction, foreground_labels=wanted)
        # a box is symmetric about its centre, so its bounds along any (oblique) axes share that centre
        expected = mask.TransformContinuousIndexToPhysicalPoint(((np.add(low, high)) / 2).tolist())
        np.testing.assert_allclose(grid_centre(mapping.model_grid), expected, atol=1e-9)
        assert mapping.model_grid.direction == tuple(direction)
        assert mapping.model_grid.size_xyz == (16, 16, 16) and mapping.model_grid.spacing_mm == (4.0, 4.0, 4.0)


def test_foreground_larger_than_field_of_view_is_cropped_and_counted():
    labels = np.zeros((60, 20, 20), np.uint8)
    labels[10:50, 5:15, 5:15] = 1  # 40 mm along x; the model grid sees 20 mm
    labels[12:14, 8:10, 8:10] = 2  # near the left end: outside
    labels[29:31, 8:10, 8:10] = 3  # in the middle: inside
    mask = make_image(labels)
    mapping = plan_physical(mask, (10, 10, 10), (2.0, 2.0, 2.0), LPS)
    assert mapping.cropped_fraction == pytest.approx(0.5)
    assert mapping.outside_voxels(mask, [2]) == 8
    assert mapping.outside_voxels(mask, [3]) == 0
    assert mapping.outside_voxels(mask, [1, 2, 3]) == 2000
    assert set(np.unique(mapping.labels_to_model(mask))) == {0, 1, 3}


def test_mapping_refuses_a_different_mask_or_image_shape():
    mask = make_image(np.ones((8, 8, 8), np.uint8))
    mapping = plan_physical(mask, (4, 4, 4), (2.0, 2.0, 2.0), LPS)
    with pytest.raises(ValueError, match="plan again"):
        mapping.labels_to_model(make_image(np.ones((8, 8, 8), np.uint8), origin=(1.0, 0.0, 0.0)))
    with pytest.raises(ValueError, match="shape"):
        mapping.image_to_input(np.zeros((8, 8, 8), np.float32))


def test_empty_mask_is_refused():
    with pytest.raises(InputError, match="no non-zero voxels"):
        plan_physical(make_image(np.zeros((8, 8, 8), np.uint8)), (4, 4, 4), (1, 1, 1), LPS)


# ------------------------------------------------------------------------------ official mode


def test_official_mode_is_identity_at_grid_size():
    labels = np.random.default_rng(1).integers(0, 3, (16, 12, 8)).astype(np.uint8)
    mask = make_image(labels, (0.7, 1.3, 2.1), (3.0, 4.0, 5.0), OBLIQUE)
    mapping = plan_official(mask, (16, 12, 8))
    assert np.array_equal(mapping.labels_to_model(mask), labels)
    image = np.random.default_rng(2).standard_normal((16, 12, 8)).astype(np.float32)
    out = mapping.image_to_input(image, background=-1.0)
    assert np.array_equal(xyz(out), image)
    assert (out.GetSize(), out.GetOrigin(), out.GetSpacing(), out.GetDirection()) == (
        mask.GetSize(), mask.GetOrigin(), mask.GetSpacing(), mask.GetDirection())


def test_official_mode_resizes_in_index_space_and_keeps_the_mask_affine():
    labels = np.zeros((20, 20, 10), np.uint8)
    labels[5:15, 5:15, 2:8] = 1
    mask = make_image(labels, (2.0, 2.0, 3.0), (1.0, 2.0, 3.0), RAS)
    mapping = plan_official(mask, (40, 40, 20))
    resized = mapping.labels_to_model(mask)
    assert np.array_equal(resized, labels.repeat(2, 0).repeat(2, 1).repeat(2, 2))  # exact 2x upsampling
    out = mapping.image_to_input(resized.astype(np.float32))
    assert out.GetSize() == (40, 40, 20)  # knowingly not the mask's size, as in the official script
    assert (out.GetOrigin(), out.GetSpacing(), out.GetDirection()) == (
        mask.GetOrigin(), mask.GetSpacing(), mask.GetDirection())


def test_official_mode_matches_nibabel_on_the_official_fixture():
    mask = read_mask(OFFICIAL_MASK)
    mapping = plan_official(mask, (32, 32, 16))
    assert np.array_equal(mapping.labels_to_model(mask), nib.load(OFFICIAL_MASK).get_fdata())


def test_official_mode_reads_the_float_brats_example():
    mask = read_mask(samples_dir() / "brats2021" / "seg" / "BraTS2021_00529_seg.nii.gz")
    labels = plan_official(mask, (192, 192, 144)).labels_to_model(mask)
    assert labels.dtype.kind == "i" and set(np.unique(labels)) == {0, 1, 2, 3, 4}


# ------------------------------------------------------------------------------ provenance


@pytest.mark.parametrize("mode", ["physical", "official"])
def test_mapping_json_round_trip(mode):
    mask = synthetic_head((40, 44, 36), (5.0, 5.0, 5.0), OBLIQUE)
    if mode == "physical":
        mapping = plan_physical(mask, (16, 16, 16), (8.0, 8.0, 8.0), WHOLE_HEAD, foreground_labels=[1, 2])
    else:
        mapping = plan_official(mask, (16, 16, 16))
    restored = GridMapping.from_dict(json.loads(json.dumps(mapping.to_dict())))
    assert restored == mapping
    assert ModelGrid.from_dict(mapping.model_grid.to_dict()) == mapping.model_grid
    out = restored.image_to_input(np.zeros((16, 16, 16), np.float32))
    assert out.GetOrigin() == mask.GetOrigin() and out.GetDirection() == mask.GetDirection()


# ------------------------------------------------------------------------------ read errors


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, key phrase of the expected message)."""
    cases = {}

    def write(name, image, phrase):
        sitk.WriteImage(image, str(tmp_path / name))
        cases[name] = (tmp_path / name, phrase)

    write("flat.nii.gz", sitk.Image([8, 8], sitk.sitkUInt8), "2-D image")
    write("series.nii.gz", sitk.Image([8, 8, 8, 3], sitk.sitkUInt8), "series of volumes")
    write("vector.nii.gz", sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3), "values per voxel")
    write("slice.nrrd", sitk.Image([8, 8, 1], sitk.sitkUInt8), "single slice")
    nan = np.zeros((8, 8, 8), np.float32)
    nan[3, 3, 3] = np.nan
    write("nan.mha", sitk.GetImageFromArray(nan), "NaN or infinite")
    (tmp_path / "corrupt.nii.gz").write_bytes(np.random.default_rng(0).bytes(4096))
    cases["corrupt.nii.gz"] = (tmp_path / "corrupt.nii.gz", "could not be read")
    (tmp_path / "folder").mkdir()
    cases["folder"] = (tmp_path / "folder", "is a folder")
    cases["missing.nii.gz"] = (tmp_path / "missing.nii.gz", "does not exist")
    return cases


def test_bad_inputs_raise_input_error_and_leave_the_file_alone(tmp_path):
    for name, (path, phrase) in bad_files(tmp_path).items():
        before = (path.read_bytes(), os.stat(path).st_mtime_ns) if path.is_file() else None
        with pytest.raises(InputError, match=phrase) as caught:
            read_mask(path)
        message = str(caught.value)
        assert str(path) in message and "; " in message, name  # names the file, then the fix
        # no SimpleITK traceback chained onto the message
        assert caught.value.__cause__ is None, name
        assert caught.value.__context__ is None or caught.value.__suppress_context__, name
        if before is not None:
            assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before, name


def test_valid_masks_in_every_format(tmp_path):
    labels = np.random.default_rng(3).integers(0, 3, (9, 10, 11)).astype(np.uint8)
    image = make_image(labels, (0.9, 1.2, 3.0), (1.5, -2.5, 3.5), OBLIQUE)
    for suffix in (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"):
        mask = write_and_read(image, tmp_path / f"mask{suffix}")
        assert np.array_equal(xyz(mask), labels), suffix
        assert_same_grid(mask, image)
    # a float mask with integer values is read as is (label checks happen later)
    floating = write_and_read(sitk.Cast(image, sitk.sitkFloat64), tmp_path / "float.nii.gz")
    assert floating.GetPixelID() == sitk.sitkFloat64
    # a trailing time axis of length 1 is one volume
    single = write_and_read(sitk.JoinSeries(image), tmp_path / "t1.nrrd")
    assert single.GetDimension() == 3 and np.array_equal(xyz(single), labels)
