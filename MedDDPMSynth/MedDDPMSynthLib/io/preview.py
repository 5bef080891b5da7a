"""Pictures for people: a three-slice montage of a volume with the tumour outlined (generate's preview.png,
the dataset's contact sheet, evaluate's montage)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import SimpleITK as sitk


def preview_png(
    image_xyz: np.ndarray, labels_xyz: np.ndarray, tumour_labels: Iterable[int], min_height: int = 256
) -> sitk.Image:
    """RGB montage of three orthogonal slices through the tumour (or the centre), tumour outlined in red.

    Arrays are on the model grid (isotropic in physical mode), so slices keep their aspect ratio."""
    tumour = np.isin(labels_xyz, list(tumour_labels))
    centre = np.argwhere(tumour).mean(0).round().astype(int) if tumour.any() else np.array(labels_xyz.shape) // 2
    grey = np.clip((image_xyz - image_xyz.min()) / max(float(np.ptp(image_xyz)), 1e-6) * 255, 0, 255).astype(np.uint8)
    panels = []
    for axis in range(3):
        sl = [slice(None)] * 3
        sl[axis] = int(centre[axis])
        g, m = grey[tuple(sl)], tumour[tuple(sl)]
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        rgb = np.repeat(g[..., None], 3, axis=2)
        rgb[edge] = (255, 40, 40)
        panels.append(np.flip(rgb.transpose(1, 0, 2), axis=0))  # rows = second axis, upwards
    height = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0))) for p in panels]
    montage = np.concatenate(panels, axis=1)
    zoom = max(1, -(-min_height // height))  # coarse model grids: enlarge by whole pixels (no blur)
    montage = montage.repeat(zoom, axis=0).repeat(zoom, axis=1)
    return sitk.GetImageFromArray(montage, isVector=True)
