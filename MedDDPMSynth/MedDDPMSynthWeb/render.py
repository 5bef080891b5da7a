"""Server-rendered pictures for the page: three slices through the tumour and a projection, as PNG.

Pictures are drawn from numpy arrays (Pillow only), so the page needs no GPU or OpenGL on the server.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

TILE = 256
TUMOUR = np.array([255, 60, 40], np.float32)
HEAD = np.array([60, 110, 200], np.float32)


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def blank_png() -> bytes:
    return _png(np.zeros((TILE, TILE * 4, 3), np.uint8))


def _grey(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    scaled = np.clip((values - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    return np.repeat(scaled[..., None], 3, axis=2).astype(np.float32)


def _tile(labels2d: np.ndarray, image2d: np.ndarray | None) -> np.ndarray:
    """One view: the image in grey with the tumour tinted, or (no image yet) the labels in colour."""
    if image2d is None:
        rgb = np.zeros(labels2d.shape + (3,), np.float32)
        rgb[labels2d == 1] = HEAD
    else:
        rgb = _grey(image2d)
    tumour = labels2d >= 2
    rgb[tumour] = 0.45 * rgb[tumour] + 0.55 * TUMOUR
    picture = Image.fromarray(np.flipud(rgb).astype(np.uint8))  # superior/anterior up
    scale = TILE / max(picture.width, picture.height)  # fill the tile (voxels assumed near-isotropic)
    picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                             Image.NEAREST)
    canvas = Image.new("RGB", (TILE, TILE))
    canvas.paste(picture, ((TILE - picture.width) // 2, (TILE - picture.height) // 2))
    return np.asarray(canvas)


def centre_of(labels_zyx: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) where the slices cut: the tumour's centre, else the middle of the grid."""
    tumour = np.argwhere(labels_zyx >= 2)
    return tuple(int(v) for v in (tumour.mean(0) if len(tumour) else np.array(labels_zyx.shape) / 2))


def montage(labels_zyx: np.ndarray, image_zyx: np.ndarray | None, centre: tuple[int, int, int]) -> bytes:
    """Axial, coronal, sagittal slices through ``centre`` and a maximum projection (the '3-D view': the
    image's MIP, or the label volume seen from the front)."""
    z, y, x = centre
    cut = [(lambda a: a[z]), (lambda a: a[:, y, :]), (lambda a: a[:, :, x])]
    tiles = [_tile(c(labels_zyx), None if image_zyx is None else c(image_zyx)) for c in cut]
    tiles.append(_tile(labels_zyx.max(axis=1), None if image_zyx is None else image_zyx.max(axis=1)))
    return _png(np.concatenate(tiles, axis=1))


def voxel_at(shape_zyx, centre, px: float, py: float) -> tuple[int, int, int] | None:
    """The (x, y, z) voxel under picture pixel (px, py) of a slice tile (the inverse of :func:`_tile`'s
    flip, scale and centring), or None outside the slice or on the projection."""
    tile = int(px // TILE)
    if not 0 <= tile < 3:
        return None
    nz, ny, nx = shape_zyx
    z, y, x = centre
    rows, cols = [(ny, nx), (nz, nx), (nz, ny)][tile]
    scale = TILE / max(rows, cols)
    width, height = max(1, round(cols * scale)), max(1, round(rows * scale))
    col = int((px - tile * TILE - (TILE - width) // 2) / scale)
    row = rows - 1 - int((py - (TILE - height) // 2) / scale)
    if not (0 <= col < cols and 0 <= row < rows):
        return None
    return [(col, row, z), (col, y, row), (x, col, row)][tile]
