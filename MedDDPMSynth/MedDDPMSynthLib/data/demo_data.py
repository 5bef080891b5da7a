"""Demo training pairs (label mask, T1 image) from the MNI152 2009 template with synthetic tumours.

No patient scans can be used here, so the demo model learns from one real, public MRI (the ICBM 2009a
MNI152 T1 template and tissue maps in the nilearn wheel), varied by strong random augmentation (affine,
elastic, bias field, gamma, noise) and a random synthetic tumour per case (necrotic core, enhancing rim,
oedema, optional mass effect). Case ``i`` depends only on ``(seed, i)``: building is resumable.
Labels: whole-head family, 0 background, 1 brain (plays "head"), 2 tumour. Sub-structure map: BraTS
values, 1 necrotic, 2 oedema, 3 enhancing, 4 brain. Images: skull-stripped T1 brains (0 outside the mask),
float32 in [0, 1]; the trainer applies the model's normalisation (normalisation.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.families import WHOLE_HEAD
from MedDDPMSynthLib.domain.geometry import plan_physical
from MedDDPMSynthLib.io.outputs import atomic_write as _atomic_write

TEMPLATE_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
INSTALL_HINT = "pip install nilearn==0.14.1 (or pip install --no-deps nilearn==0.14.1: only its data files are used)"
TEMPLATE_LICENCE = (
    "ICBM 2009a nonlinear symmetric MNI152 template. Copyright (C) 1993-2009 Louis Collins, McConnell Brain "
    "Imaging Centre, Montreal Neurological Institute, McGill University. Permission to use, copy, modify, and "
    "distribute this software and its documentation for any purpose and without fee is hereby granted, provided "
    "that the above copyright notice appear in all copies. The authors and McGill University make no "
    "representations about the suitability of this software for any purpose. It is provided \"as is\" without "
    "express or implied warranty. The authors are not responsible for any data loss, equipment damage, property "
    "loss, or injury to subjects or patients resulting from the use or misuse of this software package."
)
SUBSTRUCTURES = {"necrotic": 1, "edema": 2, "enhancing": 3, "brain": 4}
FOLDERS = ("substructures", "images", "masks")  # written in this order: a case with a mask is complete
# bump whenever make_pair's output for a given rng changes. 2: a thicker enhancing rim, rarer necrosis and
# milder oedema, so the tumour label is mostly bright (version 1's label was mostly dark oedema: a tumour
# contrast too weak, d ~ 0.55, for a small model to learn; 3 of 8 cases came out darker than the brain)
GENERATOR_VERSION = 2
RADIUS_MM = (6.0, 25.0)


@dataclass
class Template:
    """The MNI template at its native 1 mm: T1 scaled so white matter is 1, brain mask, tissue maps in [0, 1]."""

    t1: sitk.Image
    brain: sitk.Image
    wm: sitk.Image
    gm: sitk.Image
    folder: Path
    _working: dict = field(default_factory=dict, repr=False, compare=False)  # per-spacing resampled copies


def find_template_dir(template_dir=None) -> Path:
    """The folder holding the three template files: ``template_dir`` or nilearn's data folder (not imported)."""
    if template_dir is None:
        spec = importlib.util.find_spec("nilearn")  # finds the package without importing its heavy deps
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"the MNI152 template comes with nilearn, which is not installed; {INSTALL_HINT}")
        folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    else:
        folder = Path(template_dir)
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise InputError(
            f"the MNI152 template file {missing[0]} is not in {folder}; {INSTALL_HINT}, or give a template folder "
            "holding the mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz files"
        )
    return folder


def load_template(template_dir=None) -> Template:
    folder = find_template_dir(template_dir)
    raw = {k: sitk.Cast(sitk.ReadImage(str(folder / name)), sitk.sitkFloat32) for k, name in TEMPLATE_FILES.items()}
    gm, wm = raw["gm"] / 255.0, raw["wm"] / 255.0
    brain = brain_mask(gm + wm)
    white = sitk.GetArrayViewFromImage(raw["t1"])[sitk.GetArrayViewFromImage(wm) > 0.8]
    t1 = raw["t1"] / float(np.median(white))  # white matter = 1, so tumour intensities are WM multiples
    return Template(t1, brain, wm, gm, folder)


def brain_mask(tissue: sitk.Image) -> sitk.Image:
    """(GM + WM) > 0.5, largest component, closed (~3 mm), holes filled: the MedDDPMSynth/Resources/Examples recipe."""
    components = sitk.RelabelComponent(sitk.ConnectedComponent(tissue > 0.5), sortByObjectSize=True)
    radius = max(1, round(3.0 / min(tissue.GetSpacing())))
    closed = sitk.BinaryMorphologicalClosing(components == 1, [radius] * 3, sitk.sitkBall)
    return sitk.Cast(sitk.BinaryFillhole(closed), sitk.sitkUInt8)


@dataclass
class _Working:
    """The template resampled to an isotropic working spacing over the brain: arrays (Z, Y, X)."""

    reference: sitk.Image
    spacing: float
    t1: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    depth: np.ndarray  # mm from the brain's outline (inside > 0)


def _working(template: Template, spacing: float) -> _Working:
    """Cached: tumours and mass effect are drawn at about the output spacing (fast, no wasted detail)."""
    key = round(float(spacing), 6)
    if key not in template._working:
        reference = _brain_box(template.brain, key, margin_mm=12.0)
        resample = lambda image: sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0)  # noqa: E731
        brain = brain_mask(resample(template.gm + template.wm))
        depth = sitk.SignedMaurerDistanceMap(brain, insideIsPositive=True, squaredDistance=False,
                                             useImageSpacing=True)
        mask = sitk.GetArrayFromImage(brain)
        t1 = sitk.GetArrayFromImage(resample(template.t1)) * mask  # skull-stripped to the mask's outline
        wm = sitk.GetArrayFromImage(resample(template.wm))
        template._working[key] = _Working(reference, key, t1, wm, mask, sitk.GetArrayFromImage(depth))
    return template._working[key]


def _brain_box(brain: sitk.Image, spacing: float, margin_mm: float) -> sitk.Image:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(brain)
    box = np.asarray(stats.GetBoundingBox(1), dtype=float)  # x, y, z start then size, in template voxels
    margin = margin_mm / np.asarray(brain.GetSpacing())
    extent_mm = (box[3:] + 2 * margin) * np.asarray(brain.GetSpacing())
    reference = sitk.Image([int(math.ceil(e / spacing)) for e in extent_mm], sitk.sitkUInt8)
    reference.SetSpacing([spacing] * 3)
    reference.SetDirection(brain.GetDirection())
    reference.SetOrigin(brain.TransformContinuousIndexToPhysicalPoint((box[:3] - margin).tolist()))
    return reference


# ------------------------------------------------------------------------------------- tumours


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation (irregular outlines, texture)."""
    noise = sitk.GetImageFromArray(rng.standard_normal(shape).astype(np.float32))
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, max(float(sigma_vox), 0.5)))
    return smooth / max(float(smooth.std()), 1e-6)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _box(centre, half: int, shape) -> tuple[slice, ...]:
    return tuple(slice(max(0, c - half), min(n, c + half + 1)) for c, n in zip(centre, shape))


def _offsets_mm(box, centre, spacing: float) -> np.ndarray:
    """(..., 3) offsets from ``centre`` in mm along the array axes (Z, Y, X) of ``box``."""
    axes = [(np.arange(s.start, s.stop) - c) * spacing for s, c in zip(box, centre)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def _place(rng, work: _Working, radius_range) -> tuple[np.ndarray, float]:
    """Radius and centre: white matter deep enough that most of the lesion stays inside the brain."""
    radius = float(rng.uniform(*radius_range))
    ok = (work.brain > 0) & (work.wm > 0.5) & (work.depth >= 0.6 * radius)
    if not ok.any():  # a large tumour on a small grid: the deepest brain voxels
        ok = work.depth >= 0.8 * work.depth.max()
    candidates = np.argwhere(ok)
    return candidates[rng.integers(len(candidates))], radius


def _mass_effect(rng, work: _Working, centre, radius: float) -> dict:
    """Push healthy tissue radially away from the centre (the tumour then fills the space).

    Input point = x - k r exp(-r^2 / 2 s^2) (x - c) / r; with k < 1 the radial map is monotone (no folding).
    """
    k, sigma = float(rng.uniform(0.1, 0.3)), 1.2 * radius
    box = _box(centre, int(math.ceil(3.5 * radius / work.spacing)), work.t1.shape)
    offsets = _offsets_mm(box, centre, work.spacing)
    shift = -k * offsets * np.exp(-(offsets**2).sum(-1) / (2 * sigma**2))[..., None]
    direction = np.asarray(work.reference.GetDirection()).reshape(3, 3)
    field_zyx = np.zeros((*work.t1.shape, 3))
    field_zyx[box] = shift[..., ::-1] @ direction.T  # index axes (x, y, z) -> physical LPS vector
    transform = sitk.DisplacementFieldTransform(_as_image(field_zyx, work.reference, is_vector=True))
    warp = lambda a, how: sitk.GetArrayFromImage(  # noqa: E731
        sitk.Resample(_as_image(a, work.reference), work.reference, transform, how, 0.0))
    work.brain = warp(work.brain, sitk.sitkNearestNeighbor)
    work.t1 = warp(work.t1, sitk.sitkLinear) * work.brain
    work.wm = warp(work.wm, sitk.sitkLinear)
    return {"strength": k, "sigma_mm": sigma}


def _lesion(rng, brain: np.ndarray, wm: np.ndarray, offsets: np.ndarray, radius: float, spacing: float):
    """Sub-structure labels (0, 1 necrotic, 2 oedema, 3 enhancing) of an irregular ellipsoidal lesion."""
    axes = rng.uniform(0.75, 1.3, 3)
    axes /= np.cbrt(axes.prod())  # same volume as the sphere of ``radius``
    distance = np.linalg.norm((offsets @ _random_rotation(rng)) / (radius * axes), axis=-1)
    # relative wobble at two scales (lobes and small bumps): every shell equally irregular
    def wobble(amplitude, scale):
        return 1 + amplitude * _smooth_noise(rng, distance.shape, scale * radius / spacing)

    distance = distance * np.clip(wobble(0.2, 0.4) + wobble(0.12, 0.15) - 1, 0.5, None)
    inner = distance * np.clip(wobble(0.2, 0.2), 0.5, None)  # necrosis and rim get their own irregularity
    core_f = float(rng.uniform(0.75, 0.95))  # enhancing core: most of the lesion, a thin oedema shell around it
    necrotic_f = float(rng.uniform(0.3, 0.6)) if rng.random() < 0.3 else 0.0
    if radius * core_f * necrotic_f < 2.5 * spacing:  # a necrosis of a voxel or two would be pure partial volume
        necrotic_f = 0.0
    inside = brain > 0
    core = (inner < core_f) & inside
    # oedema spreads along white matter, beyond the rim
    edema = (distance < 1) & inside & ~core & ((wm > 0.25) | (distance < 1.25 * core_f))
    sub = np.zeros(brain.shape, dtype=np.uint8)
    sub[edema] = SUBSTRUCTURES["edema"]
    sub[core] = SUBSTRUCTURES["enhancing"]
    sub[(inner < core_f * necrotic_f) & inside] = SUBSTRUCTURES["necrotic"]
    sub[~_largest_component(sub > 0)] = 0  # the wobble can leave stray specks: one lesion per case
    return sub, {"radius_mm": radius, "axes": axes.tolist(), "core_fraction": core_f, "necrotic_fraction": necrotic_f}


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8))))
    return sitk.GetArrayFromImage(components) == 1


def _appearance(rng, t1: np.ndarray, sub: np.ndarray, spacing: float) -> dict:
    """T1c look (in place): bright enhancing tumour, dark necrosis (when present), slightly dark oedema keeping texture."""
    texture = 1 + 0.08 * _smooth_noise(rng, t1.shape, 1.5 / spacing)
    levels = {"edema": float(rng.uniform(0.85, 0.95)), "enhancing": float(rng.uniform(1.3, 1.6)),
              "necrotic": float(rng.uniform(0.2, 0.4))}
    t1[sub == SUBSTRUCTURES["edema"]] *= levels["edema"]
    for name in ("enhancing", "necrotic"):
        where = sub == SUBSTRUCTURES[name]
        t1[where] = levels[name] * texture[where]
    return levels


def _add_tumour(rng, work: _Working, radius_range, mass_effect: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Working-grid T1 and sub-structure map (with brain = 4) with one synthetic tumour."""
    centre, radius = _place(rng, work, radius_range)
    info = {"centre_voxel_zyx": centre.tolist()}
    local = replace(work)  # the mass effect swaps in warped arrays; the cached ones stay untouched
    info["mass_effect"] = _mass_effect(rng, local, centre, radius) if rng.random() < mass_effect else None
    box = _box(centre, int(math.ceil(2.0 * radius / work.spacing)) + 1, work.t1.shape)
    offsets = _offsets_mm(box, centre, work.spacing)
    sub_box, info["lesion"] = _lesion(rng, local.brain[box], local.wm[box], offsets, radius, work.spacing)
    t1 = local.t1.copy()
    info["intensity_levels"] = _appearance(rng, t1[box], sub_box, work.spacing)
    sub = np.where(local.brain > 0, SUBSTRUCTURES["brain"], 0).astype(np.uint8)
    sub[box][sub_box > 0] = sub_box[sub_box > 0]
    return t1, sub, info


# ------------------------------------------------------------------------------------ augmentation


def _as_image(array: np.ndarray, reference: sitk.Image, is_vector: bool = False) -> sitk.Image:
    image = sitk.GetImageFromArray(array, isVector=is_vector)
    image.CopyInformation(reference)
    return image


def _spatial_transform(rng, grid: sitk.Image) -> tuple[sitk.Transform, dict]:
    """Random affine (rotation +-10 deg, scale +-8 %, shift +-5 mm) about the grid centre, then B-spline warp."""
    angles = np.radians(rng.uniform(-10, 10, 3))
    scales, shift = rng.uniform(0.92, 1.08, 3), rng.uniform(-5, 5, 3)
    rotation = sitk.Euler3DTransform((0, 0, 0), *angles.tolist())
    affine = sitk.AffineTransform(3)
    centre = np.asarray(grid.GetSize(), dtype=float) / 2 - 0.5
    affine.SetCenter(grid.TransformContinuousIndexToPhysicalPoint(centre.tolist()))
    affine.SetMatrix((np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.diag(scales)).ravel().tolist())
    affine.SetTranslation(shift.tolist())
    elastic = sitk.BSplineTransformInitializer(grid, [4, 4, 4], 3)
    amplitude = float(rng.uniform(2, 4))  # control-point displacement, mm
    elastic.SetParameters(rng.uniform(-amplitude, amplitude, len(elastic.GetParameters())).tolist())
    params = {"rotation_deg": np.degrees(angles).tolist(), "scale": scales.tolist(), "shift_mm": shift.tolist(),
              "elastic_mm": amplitude}
    return sitk.CompositeTransform([affine, elastic]), params


def _intensity(rng, image: np.ndarray, brain: np.ndarray, augment: bool) -> tuple[np.ndarray, dict]:
    """Bias field, gamma and noise inside the brain; background stays exactly 0; result scaled to [0, 1]."""
    image = np.where(brain, np.clip(image, 0, None), 0).astype(np.float64)
    params = {}
    if augment:
        coords = np.meshgrid(*(np.linspace(-1, 1, n) for n in image.shape), indexing="ij")
        z, y, x = coords
        terms = [z, y, x, z * z, y * y, x * x, z * y, z * x, y * x]  # a smooth quadratic log-field
        strength = float(rng.uniform(0.05, 0.2))
        log_bias = sum(c * t for c, t in zip(rng.normal(0, strength, len(terms)), terms))
        image = image * np.exp(log_bias)  # smooth multiplicative field, as coil sensitivity
        gamma, sigma = float(rng.uniform(0.7, 1.5)), float(rng.uniform(0.005, 0.03))
        image = (image / max(image.max(), 1e-6)) ** gamma
        image = np.where(brain, np.clip(image + rng.normal(0, sigma, image.shape), 0, None), 0)
        params = {"bias_strength": strength, "gamma": gamma, "noise_sigma": sigma}
    return (image / max(image.max(), 1e-6)).astype(np.float32), params


def make_pair(template: Template, rng: np.random.Generator, grid_xyz=WHOLE_HEAD.grid_xyz,
              spacing_mm=WHOLE_HEAD.spacing_mm, *, radius_mm=RADIUS_MM, mass_effect: float = 0.5,
              augment: bool = True) -> tuple[sitk.Image, sitk.Image, dict]:
    """One (mask uint8, image float32, info) on ``grid_xyz`` voxels at ``spacing_mm``, centred on the brain.

    ``mass_effect``: probability of the mass effect. ``augment=False`` draws the same tumour (same rng) with
    no spatial or intensity augmentation. ``info["substructures"]`` is the BraTS-style sub-structure map
    (uint8 image on the same grid); the rest of ``info`` is JSON-able parameters.
    """
    # tumours are drawn at about the output spacing: no finer than the template's 1 mm, no coarser than 4 mm
    work = _working(template, float(np.clip(min(spacing_mm), 1.0, 4.0)))
    t1, sub, info = _add_tumour(rng, work, radius_mm, mass_effect)
    plan = plan_physical(_as_image(work.brain, work.reference), grid_xyz, spacing_mm,
                         WHOLE_HEAD.direction)
    grid = plan.model_grid.reference_image()
    transform, info["augmentation"] = _spatial_transform(rng, grid) if augment else (sitk.Transform(), None)
    sub_out = sitk.Resample(_as_image(sub, work.reference), grid, transform, sitk.sitkNearestNeighbor, 0)
    image_out = sitk.Resample(_as_image(t1.astype(np.float32), work.reference), grid, transform, sitk.sitkLinear, 0.0)
    sub_array = sitk.GetArrayFromImage(sub_out)
    image_array, info["intensity"] = _intensity(rng, sitk.GetArrayFromImage(image_out), sub_array > 0, augment)
    labels = np.where(sub_array == SUBSTRUCTURES["brain"], 1, np.where(sub_array > 0, 2, 0)).astype(np.uint8)
    info["substructures"] = sub_out
    return _as_image(labels, grid), _as_image(image_array, grid), info


# ----------------------------------------------------------------------------------------- dataset


def _dataset_meta(n, seed, grid_xyz, spacing_mm, folder: Path) -> dict:
    return {
        "format": "medddpm-synth demo dataset", "generator_version": GENERATOR_VERSION,
        "n": int(n), "seed": int(seed),
        "grid_xyz": [int(v) for v in grid_xyz], "spacing_mm": [float(v) for v in spacing_mm],
        "direction": list(WHOLE_HEAD.direction),
        "pairs": "masks/case_NNNN.nii.gz <-> images/case_NNNN.nii.gz (same stem); case i uses rng seed [seed, i]",
        "labels": {"0": "background", "1": "brain (the whole-head family's head label)", "2": "tumour"},
        "substructures": {str(v): k for k, v in SUBSTRUCTURES.items()},
        "image": "skull-stripped T1 (T1c-like tumours), float32 in [0, 1], 0 outside the mask",
        "template": {
            "name": "ICBM 2009a nonlinear symmetric MNI152 (nilearn's converted copy)", "source": str(folder),
            "sha256": {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
                       for name in TEMPLATE_FILES.values()},
            "licence": TEMPLATE_LICENCE,
        },
    }


def _same_recipe(old: dict, new: dict) -> bool:
    """Everything that decides a case's content (not n, not where the template was read from)."""
    recipe = [{k: v for k, v in d.items() if k not in ("n", "template")} for d in (old, new)]
    return recipe[0] == recipe[1] and old.get("template", {}).get("sha256") == new["template"]["sha256"]


def build_dataset(out_dir, n: int, seed: int, grid_xyz=WHOLE_HEAD.grid_xyz, spacing_mm=WHOLE_HEAD.spacing_mm,
                  template_dir=None, progress: Callable[[int, int], None] | None = None,
                  template: Template | None = None) -> list[Path]:
    """Write ``n`` pairs (plus sub-structure maps) and ``dataset.json``; skips complete cases (resumable).

    ``template``: an already loaded template (else read from ``template_dir`` or nilearn when needed).
    Returns the mask paths written by this call (empty when everything existed already).
    """
    out = Path(out_dir)
    if n < 1:
        raise InputError(f"the number of cases must be at least 1, got {n}")
    folder = template.folder if template is not None else find_template_dir(template_dir)
    meta, old = _dataset_meta(n, seed, grid_xyz, spacing_mm, folder), _read_meta(out / "dataset.json")
    if old is not None and not _same_recipe(old, meta):
        raise InputError(f"{out} holds a demo dataset built with other settings (seed, grid, spacing or "
                         "template); choose another folder or delete it")
    meta["n"] = max(n, old["n"]) if old else n
    if old != meta:  # first, so that an interrupted build is resumed with the same recipe
        _atomic_write(out / "dataset.json", lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    names = [f"case_{i:04d}.nii.gz" for i in range(n)]
    todo = [i for i, name in enumerate(names) if not all((out / f / name).is_file() for f in FOLDERS)]
    if todo and template is None:
        template = load_template(template_dir)
    for done, index in enumerate(todo, start=1):
        mask, image, info = make_pair(template, np.random.default_rng([seed, index]), grid_xyz, spacing_mm)
        for sub_folder, item in zip(FOLDERS, (info["substructures"], image, mask)):
            _atomic_write(out / sub_folder / names[index], lambda p, item=item: sitk.WriteImage(item, str(p), True))
        if progress is not None:
            progress(done, len(todo))
    return [out / "masks" / names[i] for i in todo]


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        raise InputError(f"{path} is unreadable or not JSON; delete it or choose another folder") from None
