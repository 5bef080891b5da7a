"""Tumour edits on oblique, anisotropic label maps: geometry, inside-head, no holes, nesting, volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedDDPMSynthLib.domain import tumour_edit as te
from MedDDPMSynthLib.cli.commands import main
from MedDDPMSynthLib.errors import InputError

SIZE = (80, 70, 36)  # (x, y, z) voxels
SPACING = (0.8, 1.0, 2.5)  # anisotropic, mm
TISSUE = {"whole_head": 1, "brats": 4}
TUMOUR = {"whole_head": (2,), "brats": (1, 2, 3)}


def _rotation(ax_deg: float, ay_deg: float) -> np.ndarray:
    a, b = np.deg2rad(ax_deg), np.deg2rad(ay_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return rx @ ry


def _grid() -> sitk.Image:
    """Empty oblique (15 degrees about x and y) anisotropic grid."""
    image = sitk.Image(SIZE, sitk.sitkUInt8)
    image.SetSpacing(SPACING)
    image.SetDirection(_rotation(15, 15).ravel().tolist())
    image.SetOrigin((-31.5, 12.25, -40.0))
    return image


def _centre(grid: sitk.Image) -> np.ndarray:
    return np.array(grid.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in SIZE]))


def _ellipsoid(grid: sitk.Image, centre, semi_axes_mm) -> np.ndarray:
    """(Z, Y, X) boolean ellipsoid with axes along the grid axes, in mm."""
    idx = np.indices(SIZE).reshape(3, -1).T.astype(float)
    offsets = (idx - np.array(grid.TransformPhysicalPointToContinuousIndex(list(centre)))) * SPACING
    inside = ((offsets / np.array(semi_axes_mm)) ** 2).sum(1) <= 1
    return inside.reshape(SIZE).transpose(2, 1, 0)


def _map(family: str, tumour_offset=(0.0, 0.0, 0.0), second: bool = False) -> sitk.Image:
    grid = _grid()
    c = _centre(grid)
    labels = np.zeros(SIZE[::-1], np.uint8)
    labels[_ellipsoid(grid, c, (28, 31, 40))] = TISSUE[family]
    t = c + np.array(tumour_offset)
    if family == "whole_head":
        labels[_ellipsoid(grid, t, (11, 10, 12))] = 2  # ~2800 voxels
    else:  # oedema around enhancing around necrotic, shells >= 2 voxels thick
        for semi, label in (((14, 13, 17), 2), ((9, 9, 11), 3), ((5, 5, 6), 1)):
            labels[_ellipsoid(grid, t, semi)] = label
    if second:  # a smaller second tumour (component 2)
        labels[_ellipsoid(grid, c + np.array([0, 0, 24.0]), (6, 6, 7.5))] = TUMOUR[family][-1]
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(grid)
    return image


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _tumour(labels: np.ndarray, family: str) -> np.ndarray:
    return np.isin(labels, TUMOUR[family])


def _touches(inner: np.ndarray, outside: np.ndarray) -> bool:
    """Any inner voxel with a face neighbour in ``outside``."""
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        if (inner[tuple(a)] & outside[tuple(b)]).any() or (inner[tuple(b)] & outside[tuple(a)]).any():
            return True
    return False


def _check_nesting(labels: np.ndarray) -> None:
    whole, core = np.isin(labels, (1, 2, 3)), np.isin(labels, (1, 3))
    assert not _touches(core, ~whole), "enhancing/necrotic touches brain or background"
    assert not _touches(labels == 1, ~core), "necrotic touches oedema, brain or background"


def _check_rules(old: sitk.Image, new: sitk.Image, family: str) -> None:
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(new, get)() == getattr(old, get)(), get
    assert new.GetPixelID() == sitk.sitkUInt8
    before, after = _array(old), _array(new)
    # tumour stays inside the old head/brain and vacated tumour becomes tissue: background is untouched
    np.testing.assert_array_equal(after == 0, before == 0)
    assert set(np.unique(after)) <= {0, TISSUE[family], *TUMOUR[family]}
    vacated = _tumour(before, family) & ~_tumour(after, family)
    assert (after[vacated] == TISSUE[family]).all()
    if family == "brats":
        _check_nesting(after)


EDITS = {
    "shift": lambda m, f: te.shift(m, f, (7.3, -4.1, 5.5)),
    "scale_up": lambda m, f: te.scale(m, f, 1.3),
    "scale_down": lambda m, f: te.scale(m, f, 0.6),
    "scale_axes": lambda m, f: te.scale(m, f, (1.2, 0.8, 1.1)),
    "rotate": lambda m, f: te.rotate(m, f, (20, -10, 35)),
    "move": lambda m, f: te.move_to(m, f, _centre(_grid()) + [-6, 5, 10]),
    "remove": lambda m, f: te.remove(m, f),
    "add": lambda m, f: te.add(m, f, _centre(_grid()) + [0, 0, -22], 8.0),
    "shift_out_of_head": lambda m, f: te.shift(m, f, (0, 0, 30)),
}


@pytest.mark.parametrize("family", ["whole_head", "brats"])
@pytest.mark.parametrize("edit", list(EDITS))
def test_every_edit_keeps_geometry_and_label_rules(family, edit):
    old = _map(family)
    if family == "brats":
        _check_nesting(_array(old))
    new, record = EDITS[edit](old, family)
    _check_rules(old, new, family)
    assert edit.startswith(record["op"]) and record["family"] == family
    json.dumps(record)  # JSON-able for provenance


@pytest.mark.parametrize("family", ["whole_head", "brats"])
@pytest.mark.parametrize("axis, steps", [(0, 3), (1, -4), (2, 2)])
def test_whole_voxel_shift_is_exact_on_oblique_grid(family, axis, steps):
    old = _map(family)
    direction = np.array(old.GetDirection()).reshape(3, 3)
    vector = steps * direction[:, axis] * SPACING[axis]  # k voxels along grid axis `axis`
    new, record = te.shift(old, family, vector)
    before, after = _array(old), _array(new)
    moved = np.where(_tumour(before, family), before, 0)
    expected = np.roll(moved, steps, axis=2 - axis)  # array axes are (z, y, x)
    np.testing.assert_array_equal(np.where(_tumour(after, family), after, 0), expected)
    assert record["clipped_voxels"] == 0
    np.testing.assert_allclose(np.subtract(record["centroid_after_mm"], record["centroid_before_mm"]), vector, atol=1e-6)


@pytest.mark.parametrize("factor", [1.5, 0.7, (1.2, 0.8, 1.4)])
def test_scale_multiplies_volume_by_factor_cubed(factor):
    # tolerance: +-10% voxelisation error for a tumour of >= 2000 voxels (nearest neighbour)
    old = _map("whole_head")
    new, record = te.scale(old, "whole_head", factor)
    assert record["voxels_before"] >= 2000 and record["clipped_voxels"] == 0
    ratio = (_array(new) == 2).sum() / (_array(old) == 2).sum()
    assert ratio == pytest.approx(np.prod(np.broadcast_to(factor, 3)), rel=0.10)
    # nearest-neighbour voxelisation moves the centroid by a fraction of the coarsest voxel
    np.testing.assert_allclose(record["centroid_after_mm"], record["centroid_before_mm"], atol=max(SPACING) / 2)


def test_scale_keeps_brats_layers_in_proportion():
    old = _map("brats")
    new, _ = te.scale(old, "brats", 1.5)
    for layer in ((1, 2, 3), (1, 3)):
        ratio = np.isin(_array(new), layer).sum() / np.isin(_array(old), layer).sum()
        assert ratio == pytest.approx(1.5**3, rel=0.10)


def _thin_shell_brats() -> sitk.Image:
    """Nested BraTS tumour with one-voxel shells: nearest-neighbour rotation alone opens gaps in them."""
    grid = _grid()
    labels = np.zeros(SIZE[::-1], np.uint8)
    labels[_ellipsoid(grid, _centre(grid), (28, 31, 40))] = 4
    for semi, label in (((10, 10, 12), 2), ((8.5, 8.5, 9.5), 3), ((7, 7, 7), 1)):
        labels[_ellipsoid(grid, _centre(grid), semi)] = label
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(grid)
    return image


@pytest.mark.parametrize("angles", [(0, 30, 0), (45, 0, 45)])
def test_rotation_keeps_thin_shells_wrapped(angles):
    old = _thin_shell_brats()
    _check_nesting(_array(old))
    new, _ = te.rotate(old, "brats", angles)
    _check_rules(old, new, "brats")  # includes the nesting check
    whole = [np.isin(_array(m), (1, 2, 3)).sum() for m in (old, new)]
    assert whole[1] == pytest.approx(whole[0], rel=0.05)  # repairs relabel inner layers, never the whole tumour


def test_unwrapped_input_is_not_forced_into_shells():
    labels = _array(_map("brats"))
    labels[labels == 2] = 4  # no oedema: enhancing touches the brain, as often in real BraTS
    old = sitk.GetImageFromArray(labels)
    old.CopyInformation(_grid())
    new, _ = te.shift(old, "brats", (0, 0, 0))
    np.testing.assert_array_equal(_array(new), labels)


def test_zero_edits_are_identities():
    for family in ("whole_head", "brats"):
        old = _map(family)
        for new, _ in (te.shift(old, family, (0, 0, 0)), te.rotate(old, family, (0, 0, 0)), te.scale(old, family, 1)):
            np.testing.assert_array_equal(_array(new), _array(old))


@pytest.mark.parametrize("family", ["whole_head", "brats"])
def test_remove_leaves_tissue_where_the_tumour_was(family):
    old = _map(family)
    new, record = te.remove(old, family)
    assert not _tumour(_array(new), family).any()
    assert (_array(new)[_tumour(_array(old), family)] == TISSUE[family]).all()
    assert record["voxels_after"] == 0 and record["voxels_before"] == _tumour(_array(old), family).sum()


@pytest.mark.parametrize("family", ["whole_head", "brats"])
def test_add_makes_a_ball_of_the_expected_volume(family):
    old = _map(family)
    removed, _ = te.remove(old, family)
    centre = _centre(_grid()) + [3, -4, 5]
    new, record = te.add(removed, family, centre, 9.0)
    voxels = _tumour(_array(new), family).sum()
    assert voxels * np.prod(SPACING) == pytest.approx(4 / 3 * np.pi * 9.0**3, rel=0.10)
    assert record["clipped_voxels"] == 0
    np.testing.assert_allclose(record["centroid_after_mm"], centre, atol=0.5)
    if family == "brats":
        core = np.isin(_array(new), (1, 3)).sum() * np.prod(SPACING)
        assert core == pytest.approx(4 / 3 * np.pi * (0.6 * 9.0) ** 3, rel=0.25)
        assert (_array(new) == 1).any()


def test_add_refuses_bad_sublabels():
    with pytest.raises(InputError, match="edema >= enhancing"):
        te.add(_map("brats"), "brats", _centre(_grid()), 8.0, {"necrotic": 0.9})
    with pytest.raises(InputError, match="BraTS maps only"):
        te.add(_map("whole_head"), "whole_head", _centre(_grid()), 8.0, {"necrotic": 0.3})


def test_component_selection():
    old = _map("whole_head", second=True)
    before = _array(old)
    new, record = te.shift(old, "whole_head", (0, 0, 5.0), component=2)
    assert record["voxels_before"] < 1000  # component 2 is the small one
    big = _tumour(before, "whole_head") & ~(te._select(te._depth_of(before, te._scheme("whole_head")), old, 2))
    assert (_array(new)[big] == 2).all()  # the largest tumour did not move
    new1, record1 = te.remove(old, "whole_head", component=1)
    assert record1["voxels_before"] > 2000 and (_array(new1) == 2).sum() == record["voxels_before"]
    with pytest.raises(InputError, match="2 connected component"):
        te.shift(old, "whole_head", (1, 0, 0), component=3)


def test_clipping_is_reported_and_total_loss_refused():
    old = _map("whole_head")
    _, record = te.shift(old, "whole_head", (0, 0, 30))
    assert record["clipped_voxels"] > 0
    assert record["clipped_fraction"] == pytest.approx(record["clipped_voxels"] / (record["clipped_voxels"] + record["voxels_after"]))
    _, huge = te.scale(old, "whole_head", 8.0)  # result box far beyond the grid: off-grid part estimated
    assert huge["clipped_fraction"] > 0.9
    with pytest.raises(InputError, match="outside the head"):
        te.shift(old, "whole_head", (0, 0, 300))
    with pytest.raises(InputError, match="not official"):
        te.shift(sitk.Cast(old * 3, sitk.sitkUInt8), "whole_head", (1, 0, 0))


def test_batch_generators_skip_heavy_clipping():
    old = _map("whole_head")
    results = list(te.scale_sweep(old, "whole_head", [1.2, 5.0]))
    assert [r[0] for r in results] == ["scale_1.200", "scale_5.000"]
    assert results[0][1] is not None and results[1][1] is None and "skipped" in results[1][2]
    grid = list(te.shift_grid(old, "whole_head", 4.0, 4.0))
    assert len(grid) == 26 and all(m is not None for _, m, _ in grid)


# ------------------------------------------------------------------------------------------- CLI


def _write(path, image):
    sitk.WriteImage(image, str(path))
    return path


def test_cli_round_trip_custom_labels_and_refusal(tmp_path, capsys):
    custom = sitk.Cast(_map("whole_head") * 4, sitk.sitkUInt8)  # head 4, tumour 8
    mask = _write(tmp_path / "m.nrrd", custom)
    out = tmp_path / "out" / "shifted.nrrd"
    argv = ["tumor", "shift", "--mask", str(mask), "--labels", "head=4,tumor=8", "--vector", "2,0,-2.5", "-o", str(out)]
    assert main(argv) == 0
    written, original = sitk.ReadImage(str(out)), sitk.ReadImage(str(mask))
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(written, get)() == getattr(original, get)()  # exactly the input file's geometry
    assert written.GetPixelID() == sitk.sitkUInt8 and set(np.unique(_array(written))) == {0, 1, 2}
    record = json.loads((out.parent / "shifted.json").read_text())
    assert record["op"] == "shift" and record["vector_mm"] == [2.0, 0.0, -2.5]
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_cli_ras_move_and_brats_auto_family(tmp_path):
    mask = _write(tmp_path / "b.nrrd", _map("brats"))
    target = _centre(_grid()) + [4, -3, 2]
    ras = [-target[0], -target[1], target[2]]
    out = tmp_path / "moved.nii.gz"
    assert main(["tumor", "move", "--mask", str(mask), "--to=" + ",".join(map(str, ras)), "--ras", "-o", str(out)]) == 0
    record = json.loads((tmp_path / "moved.json").read_text())
    assert record["family"] == "brats"
    np.testing.assert_allclose(record["centroid_after_mm"], target, atol=1.0)


def test_cli_batch_grid_writes_a_folder(tmp_path):
    mask = _write(tmp_path / "m.nrrd", _map("whole_head"))
    folder = tmp_path / "grid"
    assert main(["tumor", "shift", "--mask", str(mask), "--grid-step", "4", "--extent", "4", "-o", str(folder)]) == 0
    assert len(list(folder.glob("shift_*.nii.gz"))) == 26
    records = json.loads((folder / "records.json").read_text())
    assert records["written"] == 26 and len(records["records"]) == 26
    assert main(["tumor", "scale", "--mask", str(mask), "--sweep", "2.0:0.5:4", "-o", str(tmp_path / "sw")]) == 0
    assert len(list((tmp_path / "sw").glob("scale_*.nii.gz"))) == 4  # 2.0, 1.5, 1.0, 0.5: none clipped


def test_cli_errors_are_one_line(tmp_path, capsys):
    mask = _write(tmp_path / "m.nrrd", _map("whole_head"))
    assert main(["tumor", "shift", "--mask", str(mask), "-o", str(tmp_path / "o.nii.gz")]) == 2
    assert "--vector" in capsys.readouterr().err
    assert main(["tumor", "remove", "--mask", str(mask), "--component", "5", "-o", str(tmp_path / "o.nii.gz")]) == 2
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize("family", ["whole_head", "brats"])
def test_affine_about_any_pivot_equals_shift_scale_rotate(family):
    """The general affine (x -> M (x - p) + p + t) rewritten about the centroid: the same labels as the
    named edits, whether given about the centroid or as a 4x4 about the origin (as a transform node)."""
    label_map = _map(family)
    c = np.array(te._centroid_mm(np.isin(_array(label_map), TUMOUR[family]), label_map))
    rotation = te.rotation_matrix([10, -25, 40])
    cases = [(te.shift(label_map, family, [3.2, -4.0, 2.5]), np.eye(3), np.array([3.2, -4.0, 2.5])),
             (te.scale(label_map, family, [1.3, 0.9, 1.1]), np.diag([1.3, 0.9, 1.1]), np.zeros(3)),
             (te.rotate(label_map, family, [10, -25, 40]), rotation, np.zeros(3))]
    for (expected, _), m, t in cases:
        about_centroid, record = te.affine(label_map, family, m, t)
        about_origin, _ = te.affine(label_map, family, m, m @ -c + c + t, pivot_mm=(0.0, 0.0, 0.0))
        np.testing.assert_array_equal(_array(about_centroid), _array(expected))
        np.testing.assert_array_equal(_array(about_origin), _array(expected))
        assert record["op"] == "affine"


def test_affine_refuses_a_flattening_or_malformed_matrix():
    label_map = _map("whole_head")
    with pytest.raises(InputError, match="flattens the tumour"):
        te.affine(label_map, "whole_head", np.diag([1.0, 1.0, 0.0]))
    with pytest.raises(InputError, match="3x3 finite numbers"):
        te.affine(label_map, "whole_head", np.eye(4))
    with pytest.raises(InputError, match="translation must be three finite numbers"):
        te.affine_preview(label_map, "whole_head", np.eye(3), [1.0, np.nan, 0.0])


def test_affine_refuses_an_absurd_translation_as_shift_does():
    label_map = _map("whole_head")
    for edit in (te.affine, te.affine_preview):
        with pytest.raises(InputError, match="longer than the mask is across"):
            edit(label_map, "whole_head", np.eye(3), [1e308, 0.0, 0.0])
        with pytest.raises(InputError, match="longer than the mask is across"):  # also about another pivot
            edit(label_map, "whole_head", np.eye(3) * 2.0, [0.0, 0.0, 0.0], pivot_mm=(1e6, 0.0, 0.0))
