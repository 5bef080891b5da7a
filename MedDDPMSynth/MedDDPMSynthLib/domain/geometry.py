"""Geometry layer: read a label mask, map it onto the model's grid and bring the result back.

Users bring masks of any size, spacing and orientation; a Med-DDPM model only runs on the fixed grid it
was trained on. A :class:`GridMapping` records both grids, so the generated image is returned on the
mask's own grid (same size, spacing, origin and direction) and can be written to provenance files.

Two modes:

* ``physical`` (:func:`plan_physical`): the model grid is placed in physical space with the model's
  training spacing and orientation, centred on the mask's foreground; labels go there by nearest
  neighbour and the image comes back by linear interpolation. Overlays exactly.
* ``official`` (:func:`plan_official`): what the official scripts do, index-space resize and the
  mask's affine on the output. Only geometrically right when the mask already has the model's size.

Arrays are in NIfTI/ITK index order (X, Y, Z) = (i, j, k), i.e. ``GetArrayFromImage(img).T``.
SimpleITK does all resampling; nothing here imports Slicer or Qt.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.labels import check_values

# ------------------------------------------------------------------------------------------- grids


#: Slicer's RAS and ITK's LPS differ by the sign of the first two axes (the one RAS <-> LPS conversion)
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def ras_to_lps(values) -> list[float]:
    """A RAS vector, point, or rotation angles about R, A, S (degrees) in LPS terms (its own inverse)."""
    x, y, z = (float(v) for v in values)
    return [-x, -y, z]


#: "the same grid" for images that went through files or scenes: equal sizes, and spacing, origin (mm) and
#: direction cosines within this (headers keep some values in float32: about 1e-5 mm of round-off)
SAME_GRID_TOLERANCE = 1e-4
#: a GridMapping is used on the very grid it was planned from (values copied from that image): float64 noise only
PLANNED_GRID_TOLERANCE = 1e-6


def same_grid(a: "sitk.Image | dict", b: "sitk.Image | dict", tolerance: float = SAME_GRID_TOLERANCE) -> bool:
    """Whether two images (or :func:`grid_of` dicts) lie on the same voxel grid: the one same-grid test."""
    a, b = (grid_of(g) if isinstance(g, sitk.Image) else g for g in (a, b))
    return [int(v) for v in a["size"]] == [int(v) for v in b["size"]] and all(
        np.allclose(a[k], b[k], atol=tolerance) for k in ("spacing", "origin", "direction"))


def grid_of(image: sitk.Image) -> dict:
    """JSON-able geometry of an image; Python floats keep SimpleITK's doubles exactly."""
    return {
        "size": [int(v) for v in image.GetSize()],
        "spacing": [float(v) for v in image.GetSpacing()],
        "origin": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
    }


def _apply_grid(image: sitk.Image, grid: dict) -> sitk.Image:
    image.SetSpacing(grid["spacing"])
    image.SetOrigin(grid["origin"])
    image.SetDirection(grid["direction"])
    return image


@dataclass(frozen=True)
class ModelGrid:
    """The model's voxel grid placed in physical space (LPS mm, as SimpleITK)."""

    size_xyz: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major as SimpleITK

    def reference_image(self) -> sitk.Image:
        """An empty image with this geometry, to resample onto."""
        image = sitk.Image([int(v) for v in self.size_xyz], sitk.sitkUInt8)
        return _apply_grid(image, self.to_dict())

    def to_dict(self) -> dict:
        return {
            "size": list(self.size_xyz),
            "spacing": list(self.spacing_mm),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelGrid:
        return cls(
            tuple(int(v) for v in d["size"]),
            tuple(float(v) for v in d["spacing"]),
            tuple(float(v) for v in d["origin"]),
            tuple(float(v) for v in d["direction"]),
        )


@dataclass(frozen=True)
class GridMapping:
    """How a mask's grid relates to the model grid, in one of the two modes (see the module docstring)."""

    mode: str  # "physical" or "official"
    model_grid: ModelGrid
    input_grid: dict  # size/spacing/origin/direction of the input mask (JSON-able)
    #: fraction of the foreground voxels whose centre lies outside the model grid (physical mode)
    cropped_fraction: float = 0.0
    #: labels that defined the foreground the grid is centred on (None: every non-zero label)
    foreground_labels: tuple[int, ...] | None = None

    def labels_to_model(self, mask: sitk.Image) -> np.ndarray:
        """Integer label array (X, Y, Z) on the model grid, by nearest neighbour (never new label values)."""
        self._check_input(mask)
        if self.mode == "official":
            resized = _index_space_resize(mask, self.model_grid.size_xyz)
        else:
            resized = sitk.Resample(
                mask, self.model_grid.reference_image(), sitk.Transform(), sitk.sitkNearestNeighbor, 0
            )
        return check_values(sitk.GetArrayFromImage(resized).transpose(2, 1, 0))

    def image_to_model(self, image: sitk.Image, background: float = 0.0) -> np.ndarray:
        """A float image on the input grid as a float32 array (X, Y, Z) on the model grid (linear;
        official mode: index-space resize), e.g. a previous result to keep during local re-generation."""
        self._check_input(image)
        if self.mode == "official":
            resized = _index_space_resize(sitk.Cast(image, sitk.sitkFloat32), self.model_grid.size_xyz, sitk.sitkLinear)
        else:
            resized = sitk.Resample(
                image, self.model_grid.reference_image(), sitk.Transform(), sitk.sitkLinear, float(background),
                sitk.sitkFloat32,
            )
        return sitk.GetArrayFromImage(resized).transpose(2, 1, 0).astype(np.float32)

    def image_to_input(self, image_xyz: np.ndarray, background: float = 0.0) -> sitk.Image:
        """A model-grid image (X, Y, Z) as a float32 image on the input mask's grid.

        Physical mode: linear interpolation; input voxels outside the model grid get ``background``.
        Official mode: the array is returned unchanged with the *mask's* origin, spacing and direction
        copied onto it, as the official scripts write it (``background`` is unused). When the mask's
        size differs from the model grid this is knowingly inconsistent: the output then has the model's
        size and does not overlay the mask.
        """
        array = np.asarray(image_xyz, dtype=np.float32)
        if array.shape != tuple(self.model_grid.size_xyz):
            raise ValueError(f"expected an image of shape {self.model_grid.size_xyz} (X, Y, Z), got {array.shape}")
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        _apply_grid(image, self.model_grid.to_dict())
        if self.mode == "official":
            return image
        grid = self.input_grid
        out = sitk.Resample(
            image, grid["size"], sitk.Transform(), sitk.sitkLinear, grid["origin"], grid["spacing"],
            grid["direction"], float(background), sitk.sitkFloat32,
        )
        return _apply_grid(out, grid)  # exactly the stored values, no round-off drift

    def outside_voxels(self, mask: sitk.Image, labels) -> int:
        """How many voxels of ``labels`` (e.g. the tumour) lie outside the model grid and are lost."""
        self._check_input(mask)
        if self.mode == "official":
            return 0  # the index-space resize always keeps the whole array
        return _count_outside(mask, _label_set(mask, labels), self.model_grid)

    def _check_input(self, mask: sitk.Image) -> None:
        if not same_grid(mask, self.input_grid, PLANNED_GRID_TOLERANCE):
            raise ValueError("this mask is not on the grid the mapping was planned for; plan again for this mask")

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "model_grid": self.model_grid.to_dict(),
            "input_grid": {k: list(v) for k, v in self.input_grid.items()},
            "cropped_fraction": float(self.cropped_fraction),
            "foreground_labels": None if self.foreground_labels is None else list(self.foreground_labels),
        }

    @classmethod
    def from_dict(cls, d: dict) -> GridMapping:
        labels = d.get("foreground_labels")
        return cls(
            mode=d["mode"],
            model_grid=ModelGrid.from_dict(d["model_grid"]),
            input_grid={k: list(v) for k, v in d["input_grid"].items()},
            cropped_fraction=float(d.get("cropped_fraction", 0.0)),
            foreground_labels=None if labels is None else tuple(int(v) for v in labels),
        )


# --------------------------------------------------------------------------------------- planning


def plan_physical(mask: sitk.Image, grid_xyz, spacing_mm, direction, foreground_labels=None) -> GridMapping:
    """Model grid of the given size, spacing and direction, centred on the foreground's bounding box.

    A foreground larger than the grid's field of view is not an error: the grid stays centred and the
    mapping's ``cropped_fraction`` says how much falls outside (check labels with ``outside_voxels``).
    """
    size, spacing, matrix = _checked_grid_args(grid_xyz, spacing_mm, direction)
    foreground = _label_set(mask, foreground_labels)
    if not foreground.any():
        which = "non-zero" if foreground_labels is None else f"label {sorted(set(foreground_labels))}"
        raise InputError(f"the mask has no {which} voxels to place the model grid on; give a mask with a labelled head")
    centre = _foreground_centre(mask, foreground, matrix)
    # centre = origin + D diag(spacing) (size - 1) / 2, so the grid's middle sits on the box's middle
    origin = _snap_to_mask_voxels(mask, centre - matrix @ (spacing * (size - 1) / 2), spacing, matrix)
    grid = ModelGrid(
        tuple(int(v) for v in size),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in origin),
        tuple(float(v) for v in matrix.ravel()),
    )
    cropped = _count_outside(mask, foreground, grid) / int(foreground.sum())
    labels = None if foreground_labels is None else tuple(int(v) for v in foreground_labels)
    return GridMapping("physical", grid, grid_of(mask), float(cropped), labels)


def plan_official(mask: sitk.Image, grid_xyz) -> GridMapping:
    """The official scripts' mapping: index-space resize to ``grid_xyz``, the mask's affine on the output.

    The "model grid" here is ``grid_xyz`` voxels with the mask's own origin, spacing and direction, which
    is how the official scripts write their output. That is only physically right when the mask is
    already ``grid_xyz`` voxels; otherwise the output has a different size and field of view than the
    mask it claims to overlay (reproduced on purpose, for comparison with the official results).
    """
    size = tuple(int(v) for v in grid_xyz)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"grid_xyz must be three positive sizes, got {grid_xyz}")
    grid = ModelGrid(size, mask.GetSpacing(), mask.GetOrigin(), mask.GetDirection())
    return GridMapping("official", grid, grid_of(mask))


def _checked_grid_args(grid_xyz, spacing_mm, direction):
    size = np.asarray(grid_xyz, dtype=int)
    spacing = np.asarray(spacing_mm, dtype=float)
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    if size.shape != (3,) or (size < 1).any() or spacing.shape != (3,) or (spacing <= 0).any():
        raise ValueError(f"need three positive grid sizes and spacings, got {grid_xyz} and {spacing_mm}")
    # The centring below assumes a rotation (or reflection): D^-1 = D^T.
    if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-6):
        raise ValueError(f"the model grid direction {tuple(direction)} is not orthonormal")
    return size, spacing, matrix


def _snap_to_mask_voxels(mask: sitk.Image, origin: np.ndarray, spacing: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Shift the origin by under half a voxel onto the mask's voxel centres when the two grids are parallel.

    With the same spacing and direction (e.g. a mask already in the training orientation) the mapping
    then moves whole voxels only: labels and images go through without any interpolation blur.
    """
    same_axes = np.allclose(mask.GetDirection(), matrix.ravel(), atol=1e-6)
    if not (same_axes and np.allclose(mask.GetSpacing(), spacing, rtol=1e-6)):
        return origin
    steps = np.round(matrix.T @ (origin - np.asarray(mask.GetOrigin())) / spacing)
    return np.asarray(mask.GetOrigin()) + matrix @ (steps * spacing)


def _label_set(mask: sitk.Image, labels) -> np.ndarray:
    """Boolean (Z, Y, X) array: non-zero voxels, or voxels whose label is in ``labels``."""
    array = sitk.GetArrayViewFromImage(mask)
    return array != 0 if labels is None else np.isin(array, list(labels))


def _foreground_centre(mask: sitk.Image, foreground: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Physical centre of the foreground's bounding box, measured along the model grid's axes.

    The box's corners (voxel edges, i.e. index +- 0.5) are mapped to physical space, which handles any
    input direction including oblique ones, then bounded in the model's frame.
    """
    nonzero = np.nonzero(foreground)  # (z, y, x) indices
    low = [float(nonzero[a].min()) - 0.5 for a in (2, 1, 0)]
    high = [float(nonzero[a].max()) + 0.5 for a in (2, 1, 0)]
    corners = np.array(
        [mask.TransformContinuousIndexToPhysicalPoint(c) for c in itertools.product(*zip(low, high))]
    )
    in_model_frame = corners @ matrix  # rows: D^T p
    middle = (in_model_frame.min(axis=0) + in_model_frame.max(axis=0)) / 2
    return matrix @ middle


def _count_outside(mask: sitk.Image, selected: np.ndarray, grid: ModelGrid) -> int:
    """Selected voxels whose centre lies outside the model grid's field of view.

    ITK decides "inside" itself: an all-ones model-grid image resampled onto the mask's grid (nearest
    neighbour, default 0) is 1 exactly at the voxel centres the model grid covers.
    """
    ones = grid.reference_image() + 1
    covered = sitk.Resample(ones, mask, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return int(np.count_nonzero(selected & (sitk.GetArrayViewFromImage(covered) == 0)))


def _index_space_resize(mask: sitk.Image, size_xyz, interpolator=sitk.sitkNearestNeighbor) -> sitk.Image:
    """Nearest-neighbour resize of the voxel array alone, ignoring spacing/orientation (official behaviour).

    Corner-aligned like torchio's ``Resize``: output voxel o samples input index (o + 0.5) * n / m - 0.5,
    so an unchanged size is the identity, bit for bit.
    """
    plain = sitk.GetImageFromArray(sitk.GetArrayFromImage(mask))  # unit spacing, zero origin, identity
    scale = np.asarray(mask.GetSize(), dtype=float) / np.asarray(size_xyz, dtype=float)
    origin = 0.5 * scale - 0.5
    return sitk.Resample(
        plain, [int(v) for v in size_xyz], sitk.Transform(), interpolator, origin.tolist(),
        scale.tolist(), plain.GetDirection(), 0, plain.GetPixelID(),
    )
