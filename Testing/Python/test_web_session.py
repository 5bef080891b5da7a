"""The browser front's session without HTTP: a mask upload becomes a segmentation on its own MRML scene,
clicks on the slice picture map to the right voxel, and the brush/erase/undo go through SceneLogic."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("PIL", reason="the web extra is not installed")
import slicer_scene_helpers  # noqa: F401,E402  (puts the Slicer-side packages on sys.path for source checkouts)
from conftest import REPO  # noqa: E402
from MedDDPMSynthWeb import render  # noqa: E402
from MedDDPMSynthWeb.session import WebSession  # noqa: E402


def _pixel(shape_zyx, tile: int, voxel_xyz) -> tuple[float, float]:
    """The centre pixel of a voxel in a slice tile (the forward form of render._tile's layout)."""
    nz, ny, nx = shape_zyx
    x, y, z = voxel_xyz
    rows, cols = [(ny, nx), (nz, nx), (nz, ny)][tile]
    col, row = [(x, y), (x, z), (y, z)][tile]
    scale = render.TILE / max(rows, cols)
    width, height = round(cols * scale), round(rows * scale)
    return (tile * render.TILE + (render.TILE - width) // 2 + (col + 0.5) * scale,
            (render.TILE - height) // 2 + (rows - 1 - row + 0.5) * scale)


@pytest.mark.parametrize("tile", [0, 1, 2])
def test_click_maps_to_the_voxel(tile):
    shape, centre = (30, 40, 50), (12, 21, 33)  # (z, y, x)
    voxel = [(7, 30, 12), (7, 21, 25), (33, 5, 25)][tile]  # in the cut of that tile
    assert render.voxel_at(shape, centre, *_pixel(shape, tile, voxel)) == voxel
    assert render.voxel_at(shape, centre, 3 * render.TILE + 10, 100) is None  # the projection
    assert render.voxel_at(shape, centre, tile * render.TILE + 1, 1) is None  # the margin of a tile


def test_load_paint_erase_undo(tmp_path):
    mask = sitk.ReadImage(str(REPO / "Resources" / "Examples" / "demo_mask.nii.gz"))
    session = WebSession(tmp_path)
    session.load_mask(mask, "demo_mask")
    labels, _ = session.logic.label_array(session.segmentation)
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(mask))  # the upload's grid and labels
    assert session.picture()[:4] == b"\x89PNG"

    shape, (z, y, x) = session._cut
    head = np.argwhere(labels[z] == 1)
    far = head[np.argmax(np.abs(head - [y, x]).sum(1))]  # a head voxel on the axial cut, far from the tumour
    target = (int(far[1]), int(far[0]), z)
    before = int((labels == 2).sum())
    session.paint(*_pixel(shape, 0, target), radius_mm=4.0)
    painted, _ = session.logic.label_array(session.segmentation)
    assert painted[z, target[1], target[0]] == 2 and (painted == 2).sum() > before
    assert ((painted > 0) == (labels > 0)).all()  # the brush stays inside the head

    session.edit("remove", None)
    erased, _ = session.logic.label_array(session.segmentation)
    assert not (erased == 2).any() and ((erased > 0) == (labels > 0)).all()
    session.edit("undo", None)
    session.edit("undo", None)
    restored, _ = session.logic.label_array(session.segmentation)
    np.testing.assert_array_equal(restored, labels)
    session.close()
