"""Anatomy checks that are warnings, not refusals (issue 20, item 1).

``--geometry official`` promises what the official ``sample.py`` / ``sample_brats.py`` write, and those
scripts check no anatomy: a mask with a stray tumour voxel outside the head is generated, with one
``warning:`` line per finding (also in provenance.json), and the images equal the official pipeline's
(condition built by the reference formula, the engine's sampler that test_official_parity.py holds to the
recorded official run). Physical mode warns about a stray fragment of at most STRAY_TUMOUR_VOXELS
voxels and still refuses a larger detached tumour, naming the fix.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from cli_helpers import OFFICIAL, TINY_CKPT, head_labels, message_lines, run_cli, save_random_checkpoint, write_mask
from MedDDPMSynthLib import BRATS, WHOLE_HEAD, UNetConfig, load_model
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.labels import STRAY_TUMOUR_VOXELS, to_official

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)

OUTSIDE = "lie outside the"


def _detached_voxel(tissue: np.ndarray) -> tuple[int, int, int]:
    """A background voxel whose 3x3x3 neighbourhood has no tissue: a tumour voxel there touches nothing."""
    padded = np.pad(tissue, 1)
    near = np.zeros_like(tissue, dtype=bool)
    for dx in range(3):
        for dy in range(3):
            for dz in range(3):
                near |= padded[dx:dx + tissue.shape[0], dy:dy + tissue.shape[1], dz:dz + tissue.shape[2]]
    return tuple(int(v) for v in np.argwhere(~near)[0])


def _official_condition(labels_xyz: np.ndarray, values, signed: bool) -> np.ndarray:
    """The official scripts' condition, from the reference document (not from our Family code)."""
    onehot = np.stack([labels_xyz == v for v in values]).astype(np.float32)
    if signed:
        onehot = onehot * 2 - 1
    return onehot.transpose(0, 3, 2, 1)[None]  # (1, C, Z, Y, X)


def _generate_official(tmp_path, capsys, mask_path, model, grid, seed):
    out = tmp_path / "out"
    code, _, stderr = run_cli(["generate", "--mask", mask_path, "--model", model, "-o", out, "--seed", seed,
                               "--device", "cpu", "--geometry", "official", "--intensity", "raw",
                               "--grid", ",".join(map(str, grid)), "--sampler", "ddpm", "--quiet"], capsys)
    return code, stderr, out


def test_official_wholehead_stray_voxel_is_a_warning_and_the_output_is_the_official_one(tmp_path, capsys, tiny_io):
    mask = sitk.ReadImage(str(OFFICIAL / "wholehead_synth_mask.nii.gz"))
    labels = sitk.GetArrayFromImage(mask).transpose(2, 1, 0).copy()  # (X, Y, Z)
    stray = _detached_voxel(labels == 1)
    labels[stray] = 2
    edited = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)))
    edited.CopyInformation(mask)
    mask_path = tmp_path / "stray.nii.gz"
    sitk.WriteImage(edited, str(mask_path))
    seed = int(tiny_io["sample_seed"])

    code, stderr, out = _generate_official(tmp_path, capsys, mask_path, TINY_CKPT, (32, 32, 16), seed)
    assert code == 0, stderr
    warnings = [line for line in message_lines(stderr) if line.startswith("warning:")]
    assert len(warnings) == 1 and "1 tumour region(s) (1 voxels) lie outside the head" in warnings[0], stderr
    assert "official" in warnings[0]
    provenance = json.loads((out / "provenance.json").read_text())
    assert any("(1 voxels) lie outside the head" in w for w in provenance["warnings"])

    assert np.array_equal(WHOLE_HEAD.condition_from_labels(labels).numpy(), _official_condition(labels, (1, 2), True))
    expected = load_model(TINY_CKPT, device="cpu").generate(labels, seed=seed)[0, 0]
    ours = sitk.ReadImage(str(out / "stray_s00_t1c.nii.gz"))
    np.testing.assert_allclose(sitk.GetArrayFromImage(ours).transpose(2, 1, 0), expected, atol=1e-6)
    np.testing.assert_allclose(ours.GetOrigin(), mask.GetOrigin())  # the official script reuses the affine
    saved_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "stray_mask.nii.gz"))).transpose(2, 1, 0)
    assert saved_mask[stray] == 2  # the stray voxel is part of the condition, as in the official run


def test_official_brats_stray_voxel_is_a_warning_and_the_output_is_the_official_one(tmp_path, capsys):
    ckpt = save_random_checkpoint(tmp_path / "tinybrats.pt", UNetConfig(8, 4, 32, (1, 1), 1, ()), timesteps=4)
    labels = head_labels(size=(32, 32, 16), spacing=(1, 1, 1), head=4, tumour=2, tumour_radius_mm=4)
    labels[16:18, 15:17, 7:9] = 3  # enhancing inside the oedema ball
    labels[17, 16, 8] = 1  # and a necrotic voxel
    stray = _detached_voxel(labels == 4)
    labels[stray] = 3  # an enhancing voxel floating outside the brain
    mask_path = write_mask(tmp_path / "seg.nii.gz", labels, spacing=(1, 1, 1))

    code, stderr, out = _generate_official(tmp_path, capsys, mask_path, ckpt, (32, 32, 16), 3)
    assert code == 0, stderr
    warnings = [line for line in message_lines(stderr) if line.startswith("warning:")]
    assert len(warnings) == 1 and "1 tumour region(s) (1 voxels) lie outside the brain" in warnings[0], stderr
    assert json.loads((out / "provenance.json").read_text())["warnings"] == [warnings[0].removeprefix("warning: ")]

    assert np.array_equal(BRATS.condition_from_labels(labels).numpy(), _official_condition(labels, (1, 2, 3, 4), False))
    expected = load_model(ckpt, device="cpu", grid_xyz=(32, 32, 16)).generate(labels, seed=3)[0]
    for c, modality in enumerate(BRATS.modalities):
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"seg_s00_{modality}.nii.gz"))).transpose(2, 1, 0)
        np.testing.assert_allclose(ours, expected[c], atol=1e-6, err_msg=modality)


def test_official_mode_turns_every_anatomy_refusal_into_a_warning():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[4:7, 4:7, 4:7] = 2  # a tumour and no head at all: the official script generates from it
    image = sitk.GetImageFromArray(labels)
    with pytest.raises(InputError, match="no head voxels"):
        to_official(image, WHOLE_HEAD, warnings=[])
    warnings: list[str] = []
    to_official(image, WHOLE_HEAD, warnings=warnings, official=True)
    assert len(warnings) == 1 and "no head voxels" in warnings[0]


@pytest.mark.parametrize("stray_voxels", [1, STRAY_TUMOUR_VOXELS, STRAY_TUMOUR_VOXELS + 1])
def test_physical_stray_threshold(stray_voxels):
    labels = head_labels()  # (40, 40, 30): head ellipsoid, tumour inside
    assert labels[0, 0, 0] == 0 and labels[0:2, 0:3, 0:4].max() == 0
    corner = np.zeros((2, 3, 4), bool).reshape(-1)
    corner[:stray_voxels] = True
    labels[0:2, 0:3, 0:4][corner.reshape(2, 3, 4)] = 2
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)))
    warnings: list[str] = []
    if stray_voxels > STRAY_TUMOUR_VOXELS:
        with pytest.raises(InputError, match="move the tumour inside the head or erase the stray voxels"):
            to_official(image, WHOLE_HEAD, warnings=warnings)
    else:
        to_official(image, WHOLE_HEAD, warnings=warnings)
        assert len(warnings) == 1 and f"({stray_voxels} voxels) lie outside the head" in warnings[0]
    with pytest.raises(InputError, match=OUTSIDE):  # callers that cannot show a warning still refuse
        to_official(image, WHOLE_HEAD)


def test_physical_generate_warns_about_one_stray_voxel(tmp_path, capsys):
    labels = head_labels()
    labels[1, 19, 15] = 2  # just outside the head ellipsoid, not touching it (see the assert)
    assert labels[0:3, 18:21, 14:17].max() == 2 and (labels[0:3, 18:21, 14:17] == 1).sum() == 0
    mask = write_mask(tmp_path / "slip.nii.gz", labels)
    out = tmp_path / "out"
    code, _, stderr = run_cli(["generate", "--mask", mask, "--model", "demo", "-o", out, "--device", "cpu",
                               "--quiet"], capsys)
    assert code == 0, stderr
    warnings = [line for line in message_lines(stderr) if line.startswith("warning:")]
    assert len(warnings) == 1 and "(1 voxels) lie outside the head" in warnings[0] and "kept as painted" in warnings[0]
    assert json.loads((out / "provenance.json").read_text())["warnings"] == [warnings[0].removeprefix("warning: ")]


def test_physical_generate_still_refuses_a_detached_tumour(tmp_path, capsys):
    labels = head_labels()
    labels[0:3, 0:3, 0:1] = 2  # 9 voxels: more than a slip
    mask = write_mask(tmp_path / "detached.nii.gz", labels)
    code, _, stderr = run_cli(["generate", "--mask", mask, "--model", "demo", "-o", tmp_path / "out",
                               "--device", "cpu", "--quiet"], capsys)
    assert code == 2
    assert message_lines(stderr) == ["error: 1 tumour region(s) (9 voxels) lie outside the head, not touching it; "
                                     "move the tumour inside the head or erase the stray voxels"]
    assert not (tmp_path / "out").exists()


def test_a_stray_voxel_far_from_the_head_does_not_move_the_model_grid(tmp_path, capsys):
    """The grid is centred on the head's bounding box; a slip in the mask's corner must not drag it
    off the head (here it would also cut the head, the grid being 96 mm deep for a 96 mm head)."""
    clean = head_labels()
    slip = clean.copy()
    slip[0, 0, 0] = 2
    grids = {}
    for name, labels in (("clean", clean), ("slip", slip)):
        mask = write_mask(tmp_path / f"{name}.nii.gz", labels)
        code, _, stderr = run_cli(["generate", "--mask", mask, "--model", "demo", "-o", tmp_path / name,
                                   "--device", "cpu", "--quiet"], capsys)
        assert code == 0, stderr
        provenance = json.loads((tmp_path / name / "provenance.json").read_text())
        grids[name] = (provenance["geometry"]["model_grid"], provenance["warnings"])
    assert grids["slip"][0] == grids["clean"][0] and grids["clean"][1] == []
    assert any("(1 voxels) lie outside the head" in w for w in grids["slip"][1])
