"""Evaluation metrics give known values on known inputs; folder evaluation and the evaluate command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("monai", reason="evaluation needs MONAI: pip install -e '.[eval]'")

from MedDDPMSynthLib.training import evaluation  # noqa: E402
from MedDDPMSynthLib.cli.commands import main  # noqa: E402
from MedDDPMSynthLib.errors import InputError  # noqa: E402

SHAPE = (32, 36, 40)  # (Z, Y, X) arrays; the smallest grids MS-SSIM is set up for


def smooth_volume(seed: int, shape=SHAPE) -> np.ndarray:
    """A [0, 1] volume with structure at several scales (MS-SSIM of unrelated ones is well below 1)."""
    noise = sitk.GetImageFromArray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    return evaluation.normalise(sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, 2.0)))


def phantom(shape=SHAPE):
    """Labels: 0 outside a box, 1 tissue, 2 a 6x6x6 tumour in the middle."""
    labels = np.zeros(shape, np.uint8)
    labels[4:-4, 4:-4, 4:-4] = 1
    centre = [n // 2 for n in shape]
    labels[tuple(slice(c - 3, c + 3) for c in centre)] = 2
    return labels


def write(path, array, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


# ------------------------------------------------------------------------------------ metrics


def test_identical_images():
    a = smooth_volume(0)
    assert evaluation.ms_ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    errors = evaluation.masked_errors(a, a)
    assert errors == {"mse": 0.0, "mae": 0.0, "psnr": math.inf}


def test_constant_offset_gives_exact_errors_inside_the_mask():
    a = smooth_volume(1).astype(np.float64)  # float64: the offset stays exactly 0.1
    mask = phantom() > 0
    b = np.where(mask, a + 0.1, a + 5.0)  # outside the mask the error is huge and must not count
    errors = evaluation.masked_errors(b, a, mask, data_range=1.0)
    assert errors["mse"] == pytest.approx(0.01, rel=1e-9)
    assert errors["mae"] == pytest.approx(0.1, rel=1e-9)
    assert errors["psnr"] == pytest.approx(20.0, rel=1e-9)  # 10 log10(1 / 0.01)
    assert evaluation.masked_errors(b, a, mask, data_range=2.0)["psnr"] == pytest.approx(10 * math.log10(400))


def test_ms_ssim_orders_similarity_and_refuses_tiny_volumes():
    a, b = smooth_volume(2), smooth_volume(3)
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 0.05, a.shape), 0, 1)
    assert evaluation.ms_ssim(a, b) < evaluation.ms_ssim(a, noisy) < 1.0
    assert evaluation.ms_ssim(a, b) == pytest.approx(evaluation.ms_ssim(b, a), abs=1e-6)
    with pytest.raises(InputError, match="28 voxels"):
        evaluation.ms_ssim(np.zeros((27, 40, 40)), np.zeros((27, 40, 40)))


def test_diversity():
    a, b, c = smooth_volume(4), smooth_volume(5), smooth_volume(6)
    assert evaluation.diversity([a, a]) == pytest.approx(1.0, abs=1e-5)
    pairs = [evaluation.ms_ssim(x, y) for x, y in ((a, b), (a, c), (b, c))]
    spread = evaluation.diversity([a, b, c])
    assert spread == pytest.approx(np.mean(pairs)) and spread < 0.9


def test_mmd_zero_for_identical_sets_and_shift_squared_for_shifted_sets():
    constant = [np.full(SHAPE, 0.3)] * 3
    assert evaluation.mmd(constant, constant) == pytest.approx(0.0, abs=1e-12)
    base = smooth_volume(7)
    rng = np.random.default_rng(1)
    ref = [base + rng.normal(0, 0.01, SHAPE) for _ in range(3)]
    same = evaluation.mmd(ref, ref)
    assert abs(same) < 1e-3
    # unbiased linear-kernel MMD: a constant shift c adds exactly c^2 (per-voxel scaling)
    assert evaluation.mmd([r + 0.5 for r in ref], ref) - same == pytest.approx(0.25, abs=1e-9)
    with pytest.raises(ValueError):
        evaluation.mmd(ref[:2], ref)


def test_tumour_contrast_uses_a_physical_shell():
    labels = phantom((40, 40, 40))
    spacing = (2.0, 1.0, 1.0)  # array order: 2 mm along the first axis
    tumour = labels == 2
    image = np.zeros(labels.shape)
    # tumour: 140 / 160 on alternate first-axis planes (mean 150); shell (<= 4 mm): 100; further tissue: 0
    index = np.indices(labels.shape)
    image[tumour] = np.where(index[0][tumour] % 2 == 0, 140.0, 160.0)
    distance = np.full(labels.shape, np.inf)
    for point in np.argwhere(tumour):
        offset = (index - point[:, None, None, None]) * np.asarray(spacing)[:, None, None, None]
        distance = np.minimum(distance, np.sqrt((offset**2).sum(0)))
    shell = (labels == 1) & (distance <= 4.0)
    image[shell] = 100.0
    result = evaluation.tumour_contrast(image, labels, (2,), 1, shell_mm=4.0, spacing_mm=spacing)
    assert result["difference"] == pytest.approx(50.0, abs=1e-12)
    assert result["shell_voxels"] == shell.sum() and result["tumour_voxels"] == tumour.sum()
    pooled = math.sqrt(((image[tumour] - 150) ** 2).sum() / (tumour.sum() + shell.sum() - 2))
    assert result["cohens_d"] == pytest.approx(50.0 / pooled, rel=1e-9)
    # the same from sitk images (spacing read from the label image, in (x, y, z) order)
    as_image = sitk.GetImageFromArray(labels)
    as_image.SetSpacing(spacing[::-1])
    assert evaluation.tumour_contrast(sitk.GetImageFromArray(image), as_image, (2,), 1, 4.0) == result
    assert evaluation.tumour_contrast(image, np.where(tumour, 1, labels), (2,), 1) is None


# ------------------------------------------------------------------------------------ folders


@pytest.fixture()
def folders(tmp_path):
    """Two cases; case_0 has two samples (one equal to the reference), case_1 one sample, plus noise files."""
    labels = phantom()
    refs = {"case_0": smooth_volume(10), "case_1": smooth_volume(11)}
    for key, ref in refs.items():
        write(tmp_path / "ref" / f"{key}.nii.gz", ref.astype(np.float32))
        write(tmp_path / "masks" / f"{key}.nii.gz", labels)
    write(tmp_path / "gen" / "case_0_s00_t1c.nii.gz", (refs["case_0"] * 2 - 1).astype(np.float32))  # [-1, 1]
    write(tmp_path / "gen" / "case_0_s01_t1c.nii.gz", smooth_volume(12).astype(np.float32))
    write(tmp_path / "gen" / "case_1_s00_t1c.nii.gz", smooth_volume(13).astype(np.float32))
    write(tmp_path / "gen" / "case_0_mask.nii.gz", labels)  # generate's copy of the mask: skipped
    write(tmp_path / "gen" / "other.nii.gz", smooth_volume(14).astype(np.float32))  # matches no case
    (tmp_path / "gen" / "provenance.json").write_text("{}")
    return tmp_path, refs


def test_matching_by_stem_prefix(tmp_path):
    for name in ("case_1.nii.gz", "case_10.nii.gz"):
        write(tmp_path / "ref" / name, np.zeros(SHAPE, np.float32))
    for name in ("case_1_s00.nii.gz", "case_10_s00.nii.gz", "case_10-b.nii.gz", "case_100.nii.gz"):
        write(tmp_path / "gen" / name, np.zeros(SHAPE, np.float32))
    cases, unmatched = evaluation.find_cases(tmp_path / "gen", tmp_path / "ref")
    assert {c.key: [p.name for p in c.generated] for c in cases} == {
        "case_1": ["case_1_s00.nii.gz"], "case_10": ["case_10-b.nii.gz", "case_10_s00.nii.gz"]}
    assert unmatched == ["case_100.nii.gz"]


def test_evaluate_folders(folders):
    root, refs = folders
    report = evaluation.evaluate_folders(root / "gen", root / "ref", root / "masks")
    assert report["counts"] == {"cases": 2, "generated": 3, "unmatched_generated": ["other.nii.gz"]}
    case0, case1 = report["cases"]
    assert (case0["case"], case0["samples"], case1["samples"]) == ("case_0", 2, 1)
    other = smooth_volume(12)
    inside = phantom() > 0
    expected = evaluation.masked_errors(other, refs["case_0"], inside)
    assert case0["mse"] == pytest.approx(expected["mse"] / 2, rel=1e-5)  # sample 0 equals the reference
    assert case0["psnr"] == math.inf
    similarity = evaluation.ms_ssim(other, refs["case_0"])
    assert case0["ms_ssim_vs_reference"] == pytest.approx((1 + similarity) / 2, abs=1e-5)
    assert case0["diversity_ms_ssim"] == pytest.approx(evaluation.ms_ssim(refs["case_0"], other), abs=1e-5)
    assert case1["diversity_ms_ssim"] is None
    assert set(report["summary"]) >= {"ms_ssim_vs_reference", "mse", "mae", "psnr", "diversity_ms_ssim", "mmd",
                                      "contrast_generated", "contrast_reference"}
    tumour = evaluation.tumour_contrast(refs["case_0"], phantom(), (2,), 1, 5.0)
    assert case0["contrast_reference"] == pytest.approx(tumour["difference"], abs=1e-6)
    assert report["summary"]["mmd"] is not None


def test_evaluate_folders_refuses_bad_folders(folders, tmp_path):
    root, _ = folders
    with pytest.raises(InputError, match="does not exist"):
        evaluation.evaluate_folders(root / "missing", root / "ref")
    with pytest.raises(InputError, match="reference folder, a masks folder"):
        evaluation.evaluate_folders(root / "gen")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no"):
        evaluation.evaluate_folders(root / "gen", tmp_path / "empty")
    write(root / "wrong" / "case_0.nii.gz", np.zeros((30, 30, 30), np.float32))
    with pytest.raises(InputError, match="same grid"):
        evaluation.evaluate_folders(root / "gen", root / "wrong")


# ---------------------------------------------------------------------------------------- CLI


def test_cli_writes_report_and_montage(folders, capsys):
    root, _ = folders
    report, png = root / "out" / "report.json", root / "out" / "montage.png"
    args = ["--generated", str(root / "gen"), "--reference", str(root / "ref"), "--masks", str(root / "masks")]
    assert main(["evaluate", *args, "-o", str(report), "--montage", str(png)]) == 0
    data = json.loads(report.read_text())  # strict JSON: the infinite PSNR of case_0 is null
    assert data["cases"][0]["psnr"] is None and data["counts"]["cases"] == 2
    montage = sitk.ReadImage(str(png))
    assert montage.GetNumberOfComponentsPerPixel() == 3 and montage.GetSize()[1] > montage.GetSize()[0] / 8
    out = capsys.readouterr()
    assert "MS-SSIM vs reference" in out.out and "other.nii.gz" in out.err
    assert main(["evaluate", *args, "-o", str(report)]) == 2  # exists: refused without --overwrite
    assert "already exists" in capsys.readouterr().err


def test_cli_bad_folder_gives_one_error_and_writes_nothing(folders, capsys):
    root, _ = folders
    report, png = root / "out" / "report.json", root / "out" / "montage.png"
    code = main(["evaluate", "--generated", str(root / "nope"), "--masks", str(root / "masks"),
                              "-o", str(report), "--montage", str(png)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not (root / "out").exists()


def test_stripe_index_sees_per_slice_scales_and_not_smooth_anatomy():
    from MedDDPMSynthLib.training.evaluation import stripe_index

    x, y, z = np.meshgrid(*[np.linspace(-1, 1, 32)] * 3, indexing="ij")
    brain = x**2 + y**2 + z**2 <= 0.9
    smooth = np.cos(3 * x) + np.sin(2 * y) + np.cos(2.5 * z)  # anatomy-like: slow along every axis
    striped = smooth * np.random.default_rng(0).uniform(0.8, 1.2, 32)[None, None, :]  # a scale per axial slice
    assert 0.3 < stripe_index(smooth, brain) < 3
    assert stripe_index(striped, brain) > 5 * stripe_index(smooth, brain)
    assert stripe_index(striped.transpose(2, 1, 0), brain) < stripe_index(striped, brain)  # only z counts


def test_fine_texture_scores_speckle_above_smooth_anatomy_and_blur_below():
    from scipy import ndimage

    from MedDDPMSynthLib.training.evaluation import fine_texture

    x, y, z = np.meshgrid(*[np.linspace(-1, 1, 32)] * 3, indexing="ij")
    brain = x**2 + y**2 + z**2 <= 0.9
    rng = np.random.default_rng(1)
    anatomy = np.cos(6 * x) + np.sin(5 * y) + 0.1 * rng.standard_normal(x.shape)
    speckled = anatomy + 0.2 * rng.standard_normal(x.shape)
    blurred = ndimage.gaussian_filter(anatomy, 1.5)
    assert fine_texture(speckled, brain) > 1.5 * fine_texture(anatomy, brain) > 3 * fine_texture(blurred, brain)
    # the brain's edge does not count: a bright outside changes nothing
    assert fine_texture(np.where(brain, anatomy, 50.0), brain) == pytest.approx(fine_texture(anatomy, brain))
    assert np.isnan(fine_texture(anatomy, np.zeros_like(brain)))
