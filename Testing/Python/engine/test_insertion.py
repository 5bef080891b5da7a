"""A synthetic tumour in a real scan (outside bit-identical, same pixel type), the invertible training
normalisation, and the anonymize command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedDDPMSynthLib import InputError, load_model
from MedDDPMSynthLib.cli.commands import main
from MedDDPMSynthLib.domain.head_mask import auto_head_mask
from MedDDPMSynthLib.workflows.insertion import insert_tumour
from MedDDPMSynthLib.store.models import load_named_model
from MedDDPMSynthLib.domain.normalisation import IntensityRange

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)

TINY_CKPT = Path(__file__).resolve().parents[3] / "Testing" / "Data" / "official" / "tiny_wholehead_ckpt.pt"
# the tiny test model on a 16^3 grid of 12 mm voxels (192 mm, the whole test scan): an eighth of the demo
# setting's 32^3 voxels per network pass, for the tests that run whole samplers
COARSE = dict(grid_xyz=(16, 16, 16), spacing_mm=(12.0, 12.0, 12.0))


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDDDPMSYNTH_HOME", str(tmp_path / "home"))


def _scan(tmp_path):
    """int16 'scan': a bright ellipsoidal head with a darker core on an oblique, anisotropic grid, plus a
    tumour mask drawn on it."""
    k, j, i = np.mgrid[:30, :44, :40]
    r = ((i - 20) / 16) ** 2 + ((j - 22) / 18) ** 2 + ((k - 15) / 12) ** 2
    rng = np.random.default_rng(0)
    values = np.where(r < 1, 600 + 300 * (r > 0.4), 0) + rng.integers(0, 20, r.shape)
    scan = sitk.GetImageFromArray(values.astype(np.int16))
    scan.SetSpacing((4.5, 4.2, 6.0))
    scan.SetOrigin((-80.0, -90.0, -70.0))
    scan.SetDirection(sitk.VersorTransform((0.3, 0.2, 1.0), 0.25).GetMatrix())
    tumour = sitk.GetImageFromArray((((i - 24) / 4) ** 2 + ((j - 22) / 4) ** 2 + ((k - 15) / 3) ** 2 < 1).astype(np.uint8))
    tumour.CopyInformation(scan)
    sitk.WriteImage(scan, str(tmp_path / "scan.nii.gz"))
    sitk.WriteImage(tumour, str(tmp_path / "tumour.nii.gz"))
    return scan, tumour


def test_intensity_range_round_trip():
    volume = np.random.default_rng(1).normal(300, 50, (6, 5, 4))
    volume[:, :, 2] = 7.0  # a constant slice
    fit = IntensityRange.per_slice(volume)
    model = fit.forward(volume)
    assert model.min() == -1 and model.max() == 1 and (model[:, :, 2] == -1).all()
    np.testing.assert_allclose(fit.inverse(model), volume, rtol=1e-5)
    whole = IntensityRange.per_volume(volume)
    np.testing.assert_allclose(whole.inverse(whole.forward(volume)), volume, rtol=1e-5)


def test_insert_keeps_the_scan_outside_bit_for_bit(tmp_path):
    scan, tumour = _scan(tmp_path)
    result = insert_tumour(load_model(TINY_CKPT, **COARSE), [scan], tumour, seed=2, margin_mm=4, harmonize=2)
    out = result.images[0]
    assert out.GetPixelID() == scan.GetPixelID() and out.GetSize() == scan.GetSize()
    assert out.GetOrigin() == scan.GetOrigin() and out.GetDirection() == scan.GetDirection()
    before, after, region = (sitk.GetArrayFromImage(x) for x in (scan, out, result.region))
    assert region.any() and not region.all()
    assert np.array_equal(before[region == 0], after[region == 0])
    assert (before[region > 0] != after[region > 0]).mean() > 0.5
    labels = sitk.GetArrayFromImage(result.labels)
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    assert result.record["head_mask"] == "automatic" and result.record["regenerated_voxels"] == int(region.sum())


@pytest.mark.parametrize(
    "case,phrase",
    [("empty", "tumour mask is empty"), ("grid", "different grids"), ("outside", "outside the head"),
     ("two scans", "needs 1 scan"), ("margin", "0 mm or more")],
)
def test_insert_refusals(tmp_path, case, phrase):
    scan, tumour = _scan(tmp_path)
    scans, margin = [scan], 4.0
    if case == "empty":
        tumour = tumour * 0
    elif case == "grid":
        tumour = sitk.Resample(tumour, [20, 20, 20], sitk.Transform(), sitk.sitkNearestNeighbor, tumour.GetOrigin(),
                               (5.0, 5.0, 5.0), tumour.GetDirection())
    elif case == "outside":
        tumour = tumour * 0
        tumour[1, 1, 1] = 1
    elif case == "two scans":
        scans = [scan, scan]
    else:
        margin = -2.0
    with pytest.raises(InputError, match=phrase):
        insert_tumour(load_named_model("demo"), scans, tumour, margin_mm=margin)


def test_insert_and_anonymize_commands(tmp_path, capsys):
    scan, _ = _scan(tmp_path)
    coarse = ["--name", "coarse", "--grid", "16,16,16", "--spacing", "12,12,12"]
    assert main(["models", "import", str(TINY_CKPT), *coarse]) == 0
    args = ["insert", "--scan", str(tmp_path / "scan.nii.gz"), "--tumor", str(tmp_path / "tumour.nii.gz"),
            "-o", str(tmp_path / "ins"), "--model", "coarse", "--harmonize", "1", "--quiet"]
    assert main(args) == 0
    record = json.loads((tmp_path / "ins" / "insertion.json").read_text())
    assert record["outputs"] == ["scan_with_tumor.nii.gz"]
    written = sitk.ReadImage(str(tmp_path / "ins" / "scan_with_tumor.nii.gz"))
    assert written.GetPixelID() == sitk.sitkInt16
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "ins").iterdir()}
    assert main(args) == 2 and "already exists" in capsys.readouterr().err  # nothing overwritten
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "ins").iterdir()}

    assert main(["anonymize", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "anon"), "--model", "coarse",
                 "--quiet"]) == 0
    image = sitk.ReadImage(str(tmp_path / "anon" / "scan_anon_s00_t1c.nii.gz"))
    assert image.GetSize() == scan.GetSize()
    assert np.allclose(image.GetDirection(), scan.GetDirection(), atol=1e-6)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "anon" / "scan_anon_mask.nii.gz")))
    assert np.array_equal(mask, sitk.GetArrayFromImage(auto_head_mask(scan)))  # the scan's own head outline
