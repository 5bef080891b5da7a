"""Local re-generation: outside the region bit-identical, inside regenerated, clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedDDPMSynthLib import WHOLE_HEAD, InputError
from MedDDPMSynthLib.domain.labels import to_official
from MedDDPMSynthLib.store.models import load_named_model
from MedDDPMSynthLib.workflows.pipeline import GenerateRequest, generate_files
from MedDDPMSynthLib.training.evaluation import seam_score
from MedDDPMSynthLib.workflows.regenerate import regeneration_region
from MedDDPMSynthLib.model.sampling import repaint_schedule

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)


def test_repaint_schedule_counts():
    actions = repaint_schedule(30, 10, 3)
    denoise = [t for a, t in actions if a == "denoise"]
    assert denoise[0] == 29 and denoise[-1] == 0
    assert len(denoise) == 30 + 2 * 2 * 10  # jump points at levels 10 and 0, two extra rounds of 10 each
    assert repaint_schedule(30, 10, 1) == [("denoise", t) for t in reversed(range(30))]


def test_api_keeps_outside_exactly(tiny_model, tiny_io):
    # every other voxel of the recorded 32 x 32 x 16 label volume (head and tumour): the same claims on 8x
    # fewer voxels per network pass
    labels = tiny_io["label_volume_xyz"][::2, ::2, ::2]
    previous = tiny_model.generate(labels, seed=1)[0]
    region = np.zeros(labels.shape, bool)
    region[5:10, 5:10, 2:5] = True
    new = tiny_model.generate(labels, seed=2, keep_image=previous, regenerate=region, harmonize=2)[0]
    assert np.array_equal(new[:, ~region], previous[:, ~region])
    assert np.abs(new[:, region] - previous[:, region]).mean() > 0.1
    with pytest.raises(InputError, match="empty"):
        tiny_model.generate(labels, keep_image=previous, regenerate=np.zeros_like(region))


SMALL_GRID = (20, 20, 20)  # voxels of the test model's 6 mm: fits the half-size head (scale=0.5) below


def _head_mask(tmp_path, name, tumour_shift=0, scale=1.0):
    """Oblique, anisotropic head (label 1) with a tumour (label 2), 40 x 36 x 24 voxels (of 5 x 5.5 x 8 mm
    times ``scale``)."""
    k, j, i = np.mgrid[:24, :36, :40]
    head = ((i - 20) / 17) ** 2 + ((j - 18) / 15) ** 2 + ((k - 12) / 10) ** 2 < 1
    tumour = ((i - 14 - tumour_shift) / 4) ** 2 + ((j - 18) / 4) ** 2 + ((k - 12) / 3) ** 2 < 1
    labels = head.astype(np.uint8) + (tumour & head).astype(np.uint8)
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(tuple(scale * s for s in (5.0, 5.5, 8.0)))
    image.SetOrigin((-90.0, 80.0, -100.0))
    rotation = sitk.VersorTransform((0.2, 0.1, 1.0), 0.3).GetMatrix()
    image.SetDirection(rotation)
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def test_file_workflow_shift_and_regenerate(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDDDPMSYNTH_HOME", str(tmp_path / "home"))
    model = load_named_model("demo")
    # a half-size head (~85 mm) on a 20^3 grid of the test model's 6 mm voxels: a quarter of its 32^3 voxels
    # per network pass, still oblique, anisotropic and resampled both ways; the tumour moves by 20 mm
    first_mask, moved_mask = _head_mask(tmp_path, "m.nii.gz", scale=0.5), _head_mask(tmp_path, "moved.nii.gz", 8, 0.5)
    first = generate_files(GenerateRequest(first_mask, tmp_path / "first", grid_xyz=SMALL_GRID), model)
    previous = first.files[0]
    second = generate_files(
        GenerateRequest(moved_mask, tmp_path / "second", seed=3, grid_xyz=SMALL_GRID, keep=previous, margin_mm=5,
                        harmonize=2), model
    )
    old, new = sitk.ReadImage(str(previous)), sitk.ReadImage(str(second.files[0]))
    region = regeneration_region(
        to_official(sitk.ReadImage(str(first_mask)), WHOLE_HEAD),
        to_official(sitk.ReadImage(str(moved_mask)), WHOLE_HEAD), WHOLE_HEAD, 5,
    )
    A, B, R = (sitk.GetArrayFromImage(x) for x in (old, new, region))
    assert new.GetSize() == old.GetSize()
    assert np.allclose(new.GetDirection(), old.GetDirection(), atol=1e-6)  # NIfTI stores float32 quaternions
    assert R.any() and not R.all()
    assert np.array_equal(A[R == 0], B[R == 0])  # bit-identical outside the region
    assert np.abs(A[R > 0] - B[R > 0]).mean() > 0.05  # regenerated inside
    record = json.loads((tmp_path / "second" / "provenance.json").read_text())["local_regeneration"]
    assert record["margin_mm"] == 5 and record["harmonize"] == 2


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("first")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDDDPMSYNTH_HOME", str(folder / "home"))
    model = load_named_model("demo")
    mask = _head_mask(folder, "m.nii.gz", scale=0.5)
    first = generate_files(GenerateRequest(mask, folder / "first", grid_xyz=SMALL_GRID), model)
    other = sitk.Image([10, 10, 10], sitk.sitkUInt8)
    other[5, 5, 5] = 1
    sitk.WriteImage(other, str(folder / "other.nii.gz"))
    yield model, mask, first.files[0], folder
    mp.undo()


@pytest.mark.parametrize(
    "change,phrase",
    [
        (dict(geometry="official"), "physical only"),
        (dict(keep="missing.nii.gz"), "previous image not found"),
        (dict(intensity="unit"), "same for re-generation"),
        (dict(margin_mm=-1), "0 mm or more"),
        (dict(previous_mask="other.nii.gz"), "different grids"),
    ],
)
def test_bad_regeneration_requests(first_run, change, phrase):
    model, mask, previous, folder = first_run
    args = {"keep": previous, **change}
    for key in ("keep", "previous_mask"):
        if isinstance(args.get(key), str):
            args[key] = folder / args[key]
    before = sorted(str(p) for p in folder.rglob("*"))
    with pytest.raises(InputError, match=phrase):
        generate_files(GenerateRequest(mask, folder / "second", grid_xyz=SMALL_GRID, **args), model)
    assert sorted(str(p) for p in folder.rglob("*")) == before  # nothing written


def test_seam_score_sees_a_step_edge():
    region = sitk.Image([30, 30, 30], sitk.sitkUInt8)
    region[10:20, 10:20, 10:20] = 1
    smooth = sitk.GaussianSource(sitk.sitkFloat32, [30, 30, 30], [8.0] * 3, [15.0] * 3, 1.0)
    stepped = sitk.Add(smooth, sitk.Cast(region, sitk.sitkFloat32))  # +1 inside: a seam on the boundary
    clean, seam = seam_score(smooth, region), seam_score(stepped, region)
    assert seam["boundary"] > 5 * max(seam["inside"], seam["outside"])
    assert clean["boundary"] < 2 * max(clean["inside"], clean["outside"])
