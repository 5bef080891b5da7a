"""Edit the tumour of a label map in physical space: shift, scale, rotate, move, remove, add.

Maps are ``sitk.Image`` label maps in a family's OFFICIAL convention (see :func:`labels.to_official`):
whole-head 0 background, 1 head, 2 tumour; BraTS 1 necrotic, 2 oedema, 3 enhancing, 4 brain. Points and
vectors are SimpleITK physical coordinates (LPS, mm); rotations are about the fixed physical x, y, z axes.

Rules every edit keeps (the official notebook works in voxel space and breaks some):

* the edited tumour leaves its old site, which becomes tissue (head 1 / brain 4);
* the new tumour is written on top, then clipped to the old tissue ∪ old tumour region (never into the
  background); the record reports ``clipped_voxels`` (including voxels pushed off the grid);
* where old and new sites overlap the tumour stays (no holes);
* transforms act about the physical centroid, nearest neighbour onto the same grid, so a shift by whole
  voxels along the grid axes is an exact translation, also on oblique and anisotropic grids.

BraTS nesting. The tumour is a stack of cumulative layers, outer to inner: whole tumour {1, 2, 3} ⊇
tumour core {1, 3} ⊇ necrotic {1}; i.e. oedema (2) surrounds enhancing (3), which surrounds necrotic (1).
The stack is resampled as one "depth" map (0 none, 1 oedema, 2 enhancing, 3 necrotic), so the layers stay
nested by construction. Where the input also *wraps* an inner layer in its outer one (no core voxel
face-touches brain or background; no necrotic voxel face-touches oedema, brain or background), the result
does too: thin spots opened by resampling or clipping are given the outer label.

Every edit returns ``(new_map, record)``; the record (JSON-able) has the operation, its parameters,
centroids before/after (mm), voxel counts and clipping, for undo and provenance.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.families import Family, family_named

# ------------------------------------------------------------------------------------- label maps


@dataclass(frozen=True)
class _Scheme:
    """The family's label knowledge (:class:`families.Family`) in the terms the edits use."""

    family: str
    tissue: int  # the label vacated tumour becomes, and the region tumours must stay in
    tissue_name: str
    depth_labels: tuple[int, ...]  # label of depth 1, 2, ... (outer to inner layer)


#: default radius fractions of the BraTS seed blob of :func:`add` (oedema shell, enhancing shell, core)
DEFAULT_SUBLABELS = {"edema": 1.0, "enhancing": 0.6, "necrotic": 0.35}
#: batch edits (shift grid, scale sweep) make at most this many masks: a typo such as a 0.01 mm step
#: would otherwise ask for billions and fill a hidden staging folder for hours
MAX_BATCH_EDITS = 2000
MAX_CLIPPED_FRACTION = 0.5  # batch results clipping more than this are skipped (the notebook's rule)


def _scheme(family: Family | str) -> _Scheme:
    family = family_named(family)
    return _Scheme(family.name, family.tissue_label, family.tissue_name, family.tumour_layers)


def _labels_of(label_map: sitk.Image, scheme: _Scheme) -> np.ndarray:
    """The map as a (Z, Y, X) uint8 array, refusing values outside the family's official labels."""
    labels = sitk.GetArrayFromImage(label_map)
    allowed = {0, scheme.tissue, *scheme.depth_labels}
    unknown = sorted(set(np.unique(labels).tolist()) - allowed)
    if unknown:
        raise InputError(
            f"the map has label values {unknown[:6]} that are not official {scheme.family} labels "
            f"{sorted(allowed)}; convert it with labels.to_official (or --labels) first"
        )
    return labels.astype(np.uint8)


def _depth_of(labels: np.ndarray, scheme: _Scheme) -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    for depth, label in enumerate(scheme.depth_labels, start=1):
        lut[label] = depth
    return lut[labels]


def _labels_from_depth(depth: np.ndarray, scheme: _Scheme) -> np.ndarray:
    return np.array((0, *scheme.depth_labels), np.uint8)[depth]


def _image_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.uint8))
    image.CopyInformation(reference)
    return image


def _select(depth: np.ndarray, reference: sitk.Image, component: int | None) -> np.ndarray:
    """The tumour voxels to edit: all, or connected component ``component`` (1 = largest)."""
    tumour = depth > 0
    if not tumour.any():
        raise InputError("the map has no tumour voxels to edit; add a tumour first")
    if component is None:
        return tumour
    parts = sitk.RelabelComponent(sitk.ConnectedComponent(_image_like(tumour, reference), True))
    parts = sitk.GetArrayFromImage(parts)
    count = int(parts.max())
    if not 1 <= int(component) <= count:
        raise InputError(f"component {component} does not exist: the tumour has {count} connected "
                         f"component(s), numbered 1 (largest) to {count}")
    return parts == int(component)


def _centroid_mm(region: np.ndarray, reference: sitk.Image) -> list[float] | None:
    """Physical centroid of a (Z, Y, X) boolean region (the index mean, mapped by the affine grid)."""
    if not region.any():
        return None
    mean_xyz = np.argwhere(region).mean(axis=0)[::-1]
    return [float(v) for v in reference.TransformContinuousIndexToPhysicalPoint(mean_xyz.tolist())]


# ----------------------------------------------------------------------------------- nesting (wrap)


def _erode6(region: np.ndarray) -> np.ndarray:
    """Face-connected erosion by one voxel; the grid border counts as inside (no spurious erosion)."""
    padded = np.pad(region, 1, constant_values=True)
    out = region.copy()
    for axis in range(3):
        for step in (-1, 1):
            out &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return out


def _wrapped_layers(depth: np.ndarray) -> list[int]:
    """Depths d whose layer is wrapped in layer d-1 (no face contact with anything outside it)."""
    return [d for d in range(2, int(depth.max()) + 1) if not ((depth >= d) & ~_erode6(depth >= d - 1)).any()]


def _restore_wrap(depth: np.ndarray, layers: list[int]) -> None:
    """In place: inner-layer voxels touching the outside of their outer layer get the outer label."""
    for d in layers:
        depth[(depth >= d) & ~_erode6(depth >= d - 1)] = d - 1


# ------------------------------------------------------------------------------------- resampling


def _affine(matrix, centre, translation=(0.0, 0.0, 0.0)) -> sitk.AffineTransform:
    """Forward map x -> M (x - c) + c + t in physical space."""
    transform = sitk.AffineTransform(3)
    transform.SetMatrix([float(v) for v in np.asarray(matrix, float).ravel()])
    transform.SetCenter([float(v) for v in centre])
    transform.SetTranslation([float(v) for v in translation])
    return transform


def _target_box(region: np.ndarray, reference: sitk.Image, forward: sitk.AffineTransform):
    """Integer index box (x, y, z) covering the transformed region, possibly beyond the grid."""
    idx = np.argwhere(region)[:, ::-1]
    lows, highs = idx.min(0) - 0.5, idx.max(0) + 0.5
    mapped = [
        reference.TransformPhysicalPointToContinuousIndex(
            forward.TransformPoint(reference.TransformContinuousIndexToPhysicalPoint(corner)))
        for corner in itertools.product(*zip(lows.tolist(), highs.tolist()))
    ]
    return np.floor(np.min(mapped, 0)).astype(int), np.ceil(np.max(mapped, 0)).astype(int)


def _transform_depth(depth: np.ndarray, region: np.ndarray, reference: sitk.Image, forward):
    """Depth map of ``region`` moved by ``forward``: (full-grid array, voxel count including off-grid).

    Resampled (nearest neighbour, inverse mapping) onto a box around the result only, which may stick out
    of the grid: what lies outside still counts as clipped. A huge box (large scale factors) is cut to the
    grid and the off-grid part estimated from the volume change |det M|.
    """
    low, high = _target_box(region, reference, forward)
    grid = np.array(reference.GetSize())
    expected = 0
    if np.prod(high - low + 1.0) > 4.0 * np.prod(grid):
        low, high = np.maximum(low, 0), np.minimum(high, grid - 1)
        expected = round(np.count_nonzero(region) * abs(np.linalg.det(np.reshape(forward.GetMatrix(), (3, 3)))))
    size = (high - low + 1).tolist()
    origin = reference.TransformContinuousIndexToPhysicalPoint(low.astype(float).tolist())
    box = sitk.Resample(
        _image_like(np.where(region, depth, 0), reference), size, forward.GetInverse(), sitk.sitkNearestNeighbor,
        origin, reference.GetSpacing(), reference.GetDirection(), 0, sitk.sitkUInt8,
    )
    box = sitk.GetArrayFromImage(box)
    full = np.zeros_like(depth)
    lo, hi = np.maximum(low, 0), np.minimum(high + 1, grid)  # overlap of box and grid, (x, y, z)
    if (hi > lo).all():
        src = tuple(slice(a - b, c - b) for a, b, c in zip(lo[::-1], low[::-1], hi[::-1]))
        full[tuple(slice(a, c) for a, c in zip(lo[::-1], hi[::-1]))] = box[src]
    return full, max(int(np.count_nonzero(box)), expected)


# ------------------------------------------------------------------------------------ core of edits


def _compose(label_map, scheme, labels, depth, moving, moved, total, wrap, op, params, component):
    """Vacate ``moving``, clip ``moved`` to the old tissue ∪ tumour, restore wrap, write, record."""
    allowed = (labels == scheme.tissue) | (depth > 0)
    moved = np.where(allowed, moved, 0).astype(np.uint8)
    kept = int(np.count_nonzero(moved))
    if total and not kept:
        raise InputError(f"{op}: the whole tumour would lie outside the {scheme.tissue_name}; "
                         "use a smaller shift/scale or a point inside it")
    _restore_wrap(moved, wrap)
    new_depth = np.maximum(np.where(moving, 0, depth), moved)
    new_labels = np.where(moving, scheme.tissue, labels).astype(np.uint8)
    new_labels[new_depth > 0] = _labels_from_depth(new_depth, scheme)[new_depth > 0]
    clipped = total - kept
    record = {
        "op": op, "family": scheme.family, "component": component, **params,
        "centroid_before_mm": _centroid_mm(moving, label_map), "centroid_after_mm": _centroid_mm(moved > 0, label_map),
        "voxels_before": int(np.count_nonzero(moving)), "voxels_after": kept,
        "clipped_voxels": clipped, "clipped_fraction": clipped / total if total else 0.0,
        "voxel_volume_mm3": float(np.prod(label_map.GetSpacing())),
    }
    return _image_like(new_labels, label_map), record


def _edit(label_map, family, component, op, params, make_forward):
    """Common path of the transform edits; ``make_forward(centroid)`` gives the forward affine."""
    scheme = _scheme(family)
    labels = _labels_of(label_map, scheme)
    depth = _depth_of(labels, scheme)
    moving = _select(depth, label_map, component)
    forward = make_forward(np.array(_centroid_mm(moving, label_map)))
    moved, total = _transform_depth(depth, moving, label_map, forward)
    wrap = _wrapped_layers(np.where(moving, depth, 0))
    return _compose(label_map, scheme, labels, depth, moving, moved, total, wrap, op, params, component)


def _vector(values, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if array.shape != (3,) or not np.isfinite(array).all():
        raise InputError(f"{what} must be three finite numbers (x, y, z), got {values!r}")
    return array


# ------------------------------------------------------------------------------------------ edits


def shift(label_map: sitk.Image, family, vector_mm, component: int | None = None):
    """Translate the tumour (or one component) by ``vector_mm`` (physical x, y, z in mm)."""
    v = _vector(vector_mm, "the shift vector")
    _check_shift_length(v, label_map, _scheme(family).tissue_name)
    return _edit(label_map, family, component, "shift", {"vector_mm": v.tolist()},
                 lambda c: _affine(np.eye(3), c, v))


def _check_shift_length(vector_mm: np.ndarray, label_map: sitk.Image, tissue_name: str) -> None:
    """A shift longer than the mask's own diagonal moves every voxel off the mask; refused by name, before
    the arithmetic (at 1e308 mm the index box overflows and the tumour would silently disappear)."""
    diagonal = float(np.linalg.norm(np.array(label_map.GetSize()) * np.array(label_map.GetSpacing())))
    length = float(np.hypot(np.hypot(vector_mm[0], vector_mm[1]), vector_mm[2]))  # no overflow at 1e308
    if not length <= diagonal:  # also catches an overflow of the norm to inf
        raise InputError(f"shift: the shift of {length:.4g} mm is longer than the mask is across ({diagonal:.0f} mm): "
                         f"the whole tumour would lie outside the {tissue_name}; give a shift of a few mm to a few cm")


def scale(label_map: sitk.Image, family, factor, component: int | None = None):
    """Scale about the tumour centroid: one factor, or three along the physical x, y, z axes."""
    f = np.full(3, float(factor)) if np.ndim(factor) == 0 else _vector(factor, "the scale factors")
    if not (np.isfinite(f).all() and (f > 0).all()):
        raise InputError(f"scale factors must be positive numbers, got {factor!r}")
    return _edit(label_map, family, component, "scale", {"factor": f.tolist()},
                 lambda c: _affine(np.diag(f), c))


def rotation_matrix(angles_deg) -> np.ndarray:
    """Rotation about the fixed physical x, then y, then z axis (extrinsic), angles in degrees."""
    ax, ay, az = np.deg2rad(_vector(angles_deg, "the rotation angles"))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rotate(label_map: sitk.Image, family, angles_deg, component: int | None = None):
    """Rotate about the tumour centroid: x, then y, then z physical axis, in degrees."""
    angles = _vector(angles_deg, "the rotation angles")
    params = {"angles_deg": angles.tolist(), "order": "x, y, z (fixed physical axes)"}
    return _edit(label_map, family, component, "rotate", params, lambda c: _affine(rotation_matrix(angles), c))


def move_to(label_map: sitk.Image, family, point_mm, component: int | None = None):
    """Translate the tumour (or one component) so that its centroid lands on ``point_mm``."""
    p = _vector(point_mm, "the target point")
    return _edit(label_map, family, component, "move", {"point_mm": p.tolist()},
                 lambda c: _affine(np.eye(3), c, p - c))


def _affine_params(matrix, translation_mm):
    m = np.asarray(matrix, dtype=float)
    if m.shape != (3, 3) or not np.isfinite(m).all():
        raise InputError(f"the transform matrix must be 3x3 finite numbers, got {matrix!r}")
    if abs(np.linalg.det(m)) < 1e-6:
        raise InputError("the transform flattens the tumour (its matrix is singular); undo the scaling and try again")
    if np.allclose(m, np.eye(3), rtol=0, atol=1e-12):
        m = np.eye(3)  # a drag that only translates: an exact translation, as shift
    return m, _vector(translation_mm, "the translation")


def _about_centroid(m, t, pivot, c, label_map, family) -> np.ndarray:
    """The translation of x -> M (x - p) + p + t rewritten about c (tiny values: 0); refused when longer
    than the mask is across, as :func:`shift` refuses it."""
    t_c = t if pivot is None else t + (m - np.eye(3)) @ (c - pivot)
    t_c = np.where(np.abs(t_c) < 1e-6, 0.0, t_c)
    _check_shift_length(t_c, label_map, _scheme(family).tissue_name)
    return t_c


def affine(label_map: sitk.Image, family, matrix, translation_mm=(0.0, 0.0, 0.0), component: int | None = None,
           pivot_mm=None):
    """Any physical affine of the tumour: x -> M (x - p) + p + t (LPS mm), p = ``pivot_mm`` or the centroid.

    The common form of :func:`shift` (M = I), :func:`scale` (M diagonal) and :func:`rotate` (M a rotation),
    which all act about the centroid c: the transform is rewritten about c, x -> M (x - c) + c + t_c with
    t_c = t + (M - I)(c - p), and a t_c below 1e-6 mm is taken as 0, so a rotation or scaling built about
    the centroid in another frame (a Slicer transform node's 4x4) gives exactly the labels of
    rotate/scale with the same parameters. Same clipping and record as every edit (op "affine").
    """
    m, t = _affine_params(matrix, translation_mm)
    pivot = None if pivot_mm is None else _vector(pivot_mm, "the pivot point")
    params = {"matrix": m.tolist(), "translation_mm": t.tolist(),
              "pivot_mm": None if pivot is None else pivot.tolist()}

    def forward(c):
        t_c = _about_centroid(m, t, pivot, c, label_map, family)
        params["translation_about_centroid_mm"] = t_c.tolist()
        return _affine(m, c, t_c)

    return _edit(label_map, family, component, "affine", params, forward)


def affine_preview(label_map: sitk.Image, family, matrix, translation_mm=(0.0, 0.0, 0.0),
                   component: int | None = None, pivot_mm=None):
    """:func:`affine` on the part of the grid it can change: (cropped new map, record).

    The crop covers the tumour and where it lands (all of it inside the grid), plus two voxels, so the
    crop of the full result and its clipping count are the same while a small tumour on a 256^3 grid costs
    a small fraction of the full edit: for previews while the user drags.
    """
    scheme = _scheme(family)
    m, t = _affine_params(matrix, translation_mm)
    is_tumour = np.zeros(256, bool)
    is_tumour[list(scheme.depth_labels)] = True
    tumour = is_tumour[sitk.GetArrayFromImage(label_map)]  # a lookup, not a full-grid label check: cheap
    if not tumour.any():
        raise InputError("the map has no tumour voxels to edit; add a tumour first")
    bounds = [np.flatnonzero(tumour.any(axis=tuple(a for a in range(3) if a != axis))) for axis in (2, 1, 0)]
    first = np.array([b[0] for b in bounds])  # (x, y, z) box of all tumour voxels
    last = np.array([b[-1] for b in bounds]) + 1
    source = label_map[int(first[0]):int(last[0]), int(first[1]):int(last[1]), int(first[2]):int(last[2])]
    moving = _select(_depth_of(_labels_of(source, scheme), scheme), source, component)
    c = np.array(_centroid_mm(moving, source))
    pivot = None if pivot_mm is None else _vector(pivot_mm, "the pivot point")
    low, high = _target_box(moving, source, _affine(m, c, _about_centroid(m, t, pivot, c, label_map, family)))
    grid = np.array(label_map.GetSize())
    low = np.clip(np.minimum(low + first, first) - 2, 0, grid)
    high = np.clip(np.maximum(high + first, last - 1) + 3, 0, grid)
    crop = label_map[int(low[0]):int(high[0]), int(low[1]):int(high[1]), int(low[2]):int(high[2])]
    return affine(crop, family, m, t, component, pivot_mm)


def remove(label_map: sitk.Image, family, component: int | None = None):
    """Erase the tumour (or one component); its voxels become tissue."""
    scheme = _scheme(family)
    labels = _labels_of(label_map, scheme)
    depth = _depth_of(labels, scheme)
    moving = _select(depth, label_map, component)
    return _compose(label_map, scheme, labels, depth, moving, np.zeros_like(depth), 0, [], "remove", {}, component)


def add(label_map: sitk.Image, family, center_mm, radius_mm: float, sublabels: dict | None = None):
    """Add a ball tumour of ``radius_mm`` at ``center_mm``, merged with any tumour already there.

    Whole-head: a ball of label 2. BraTS: concentric shells; ``sublabels`` gives each layer's radius as a
    fraction of ``radius_mm`` (default :data:`DEFAULT_SUBLABELS`: oedema 1.0, enhancing 0.6, necrotic
    0.35; 0 leaves a layer out). Voxels outside the head/brain are clipped; the ball is voxelised by voxel
    centres within the radius (in mm, so ellipsoidal in index space on anisotropic grids).
    """
    scheme = _scheme(family)
    centre = _vector(center_mm, "the centre")
    if not (math.isfinite(radius_mm) and radius_mm > 0):
        raise InputError(f"the radius must be a positive number of mm, got {radius_mm!r}")
    fractions = _sublabel_fractions(scheme, sublabels)
    labels = _labels_of(label_map, scheme)
    depth = _depth_of(labels, scheme)
    ball = _ball_depth(label_map, centre, radius_mm, fractions)
    total = int(np.count_nonzero(ball))
    if not total:
        raise InputError(f"a ball of radius {radius_mm:g} mm at {centre.tolist()} covers no voxel of the grid; "
                         "choose a centre inside the image or a larger radius")
    wrap = [d for d in range(2, len(fractions) + 1) if 0 < fractions[d - 1] < fractions[d - 2]]
    params = {"center_mm": centre.tolist(), "radius_mm": float(radius_mm),
              "expected_volume_mm3": 4 / 3 * math.pi * radius_mm**3}
    if scheme.family == "brats":
        params["sublabels"] = dict(zip(("edema", "enhancing", "necrotic"), fractions))
    none = np.zeros(depth.shape, bool)
    return _compose(label_map, scheme, labels, depth, none, ball, total, wrap, "add", params, None)


def _sublabel_fractions(scheme: _Scheme, sublabels: dict | None) -> list[float]:
    if scheme.family != "brats":
        if sublabels:
            raise InputError("sub-labels are for BraTS maps only; a whole-head tumour is one label")
        return [1.0]
    given = {("edema" if k.lower() == "oedema" else k.lower()): float(v) for k, v in (sublabels or {}).items()}
    unknown = sorted(set(given) - set(DEFAULT_SUBLABELS))
    if unknown:
        raise InputError(f"unknown sub-label {unknown[0]!r}; use edema, enhancing and necrotic")
    fractions = [given.get(k, v) for k, v in DEFAULT_SUBLABELS.items()]
    if not all(0 <= f <= 1 for f in fractions) or fractions != sorted(fractions, reverse=True):
        raise InputError(f"sub-label radius fractions must lie in 0..1 with edema >= enhancing >= necrotic, "
                         f"got {dict(zip(DEFAULT_SUBLABELS, fractions))}")
    return fractions


def _ball_depth(reference: sitk.Image, centre: np.ndarray, radius_mm: float, fractions) -> np.ndarray:
    """(Z, Y, X) depth map of concentric balls (layer d: voxel centres within fractions[d-1] * radius)."""
    spacing = np.array(reference.GetSpacing())
    matrix = np.array(reference.GetDirection()).reshape(3, 3)
    size = np.array(reference.GetSize())
    c = np.array(reference.TransformPhysicalPointToContinuousIndex(centre.tolist()))
    # index box of the ball (exact for orthonormal directions), plus a voxel of margin
    lo = np.clip(np.floor(c - radius_mm / spacing) - 1, 0, size).astype(int)
    hi = np.clip(np.ceil(c + radius_mm / spacing) + 2, 0, size).astype(int)
    depth = np.zeros(size[::-1], np.uint8)
    if (hi <= lo).any():
        return depth
    grids = np.meshgrid(*(np.arange(a, b) - cc for a, b, cc in zip(lo, hi, c)), indexing="ij")
    offsets = np.stack(grids, -1) * spacing @ matrix.T  # (x, y, z, 3) physical displacements
    distance = np.linalg.norm(offsets, axis=-1).transpose(2, 1, 0)
    block = np.zeros(distance.shape, np.uint8)
    for d, fraction in enumerate(fractions, start=1):
        block[distance <= fraction * radius_mm] = d
    depth[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = block
    return depth


# ------------------------------------------------------------------------------------------ batches


def _batch_item(name: str, edit, *args):
    """(name, map, record); map None and ``record['skipped']`` set when the edit clips too much."""
    try:
        new_map, record = edit(*args)
    except InputError as error:
        return name, None, {"name": name, "skipped": str(error)}
    record["name"] = name
    if record["clipped_fraction"] > MAX_CLIPPED_FRACTION:
        record["skipped"] = f"{record['clipped_fraction']:.0%} of the tumour clipped (more than 50%)"
        return name, None, record
    return name, new_map, record


def shift_grid(label_map, family, step_mm: float, extent_mm: float,
               component: int | None = None) -> Iterator[tuple[str, sitk.Image | None, dict]]:
    """Shifts on the grid -extent..+extent (step ``step_mm``) along physical x, y, z, except (0, 0, 0).

    Like the notebook's shift grid, but in mm; results that clip more than half the tumour come back
    with map None and a ``skipped`` reason in the record.
    """
    n = _grid_half_count(step_mm, extent_mm)
    return _shift_grid_items(label_map, family, step_mm, n, component)


def shift_grid_count(step_mm: float, extent_mm: float) -> int:
    """How many shifted masks :func:`shift_grid` makes: (2n + 1)^3 - 1 for n = floor(extent / step)."""
    if not (step_mm > 0 and extent_mm >= 0):
        raise InputError("the grid step must be positive and the extent at least 0 mm")
    n = math.floor(extent_mm / step_mm + 1e-9)
    return (2 * n + 1) ** 3 - 1


def check_batch_count(count: int, what: str, fix: str) -> None:
    """Refuse a batch edit larger than MAX_BATCH_EDITS before any work (it would run for hours)."""
    if count > MAX_BATCH_EDITS:
        raise InputError(f"{what} makes {count:,} edited masks, more than the {MAX_BATCH_EDITS:,} one batch allows; {fix}")


def _grid_half_count(step_mm: float, extent_mm: float) -> int:
    count = shift_grid_count(step_mm, extent_mm)
    check_batch_count(count, f"a shift grid with step {step_mm:g} mm and extent {extent_mm:g} mm",
                      "use a larger step or a smaller extent (e.g. step 10, extent 40: 728 shifts)")
    return math.floor(extent_mm / step_mm + 1e-9)


def _shift_grid_items(label_map, family, step_mm: float, n: int, component):
    offsets = [k * step_mm for k in range(-n, n + 1)]
    for vector in itertools.product(offsets, repeat=3):
        if any(vector):
            name = "shift_" + "_".join(f"{a}{v:+g}" for a, v in zip("xyz", vector))
            yield _batch_item(name, shift, label_map, family, vector, component)


def scale_sweep(label_map, family, factors,
                component: int | None = None) -> Iterator[tuple[str, sitk.Image | None, dict]]:
    """One uniform scale per factor (like the notebook's 2.0 -> 0.5 sweep); skips as :func:`shift_grid`."""
    factors = list(factors)
    check_batch_count(len(factors), f"a scale sweep of {len(factors):,} factors", "give fewer factors")
    return _scale_items(label_map, family, factors, component)


def _scale_items(label_map, family, factors, component):
    for factor in factors:
        yield _batch_item(f"scale_{float(factor):.3f}", scale, label_map, family, float(factor), component)
