"""Evaluation of generated volumes: similarity to references, diversity, distribution distance, contrast.

Conventions (also in the report's ``settings``):

* **Scaling.** :func:`evaluate_folders` min-max scales every volume to [0, 1] on its own before any
  metric, so generated images ([-1, 1] raw or [0, 1] unit) and references in any unit compare; the data
  range of every metric is then 1. The metric functions take arrays as given plus an explicit data range.
* **MS-SSIM** (MONAI ``MultiScaleSSIMMetric``, 3-D): Gaussian kernel 7 voxels (sigma 1.5) and 3 scales
  with the first three standard weights (0.0448, 0.2856, 0.3001) renormalised to sum 1. MONAI needs
  ``side // (scales - 1)**2 > kernel - 1``: the 2-D defaults (5 scales, kernel 11) need > 160 voxels per
  side, this setting any side >= 28, so one setting serves 32^3 .. 128^3 and BraTS 192x192x144 alike.
* **MMD** (MONAI ``MMDMetric``): unbiased linear-kernel estimate on volumes divided by sqrt(voxels), i.e.
  the squared distance between the two sets' mean images per voxel: ~0 for matching sets, c^2 for a set
  shifted by c (it can be slightly negative, being unbiased). MONAI needs equal set sizes.
* **PSNR** = 10 log10(data_range^2 / MSE), ``inf`` for identical images (``null`` in JSON reports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.io.mask_io import list_images, read_mask
from MedDDPMSynthLib.io.outputs import split_image_name
from MedDDPMSynthLib.io.preview import preview_png

MS_SSIM_KERNEL, MS_SSIM_SIGMA = 7, 1.5
MS_SSIM_WEIGHTS = tuple(w / (0.0448 + 0.2856 + 0.3001) for w in (0.0448, 0.2856, 0.3001))
MS_SSIM_MIN_SIDE = (len(MS_SSIM_WEIGHTS) - 1) ** 2 * MS_SSIM_KERNEL  # MONAI's size check: 28
SEPARATORS = "_-."
MATCHING_RULE = (
    "a file belongs to case K (a reference stem, else a mask stem) when its stem is K or starts with K followed "
    "by '_', '-' or '.'; the longest such K wins; generated files whose stem ends in '_mask' are skipped"
)


def _monai_metrics():
    """MONAI's metrics module (optional dependency, extra "eval"), imported on first use."""
    try:
        import monai.metrics
    except ImportError:
        raise InputError("evaluation needs MONAI: pip install monai==1.6.1 (or pip install -e '.[eval]')") from None
    return monai.metrics


def _volume(array) -> torch.Tensor:
    """(1, 1, X, Y, Z) float32 tensor, the layout MONAI's metrics take."""
    return torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))[None, None]


def normalise(volume: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (a constant volume becomes 0)."""
    volume = np.asarray(volume, dtype=np.float32)
    low, span = float(volume.min()), float(np.ptp(volume))
    return (volume - low) / span if span > 0 else np.zeros_like(volume)


def masked_errors(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0) -> dict:
    """MSE, MAE and PSNR (dB, against ``data_range``) over the voxels where ``mask`` is true (all if None)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images of shapes {a.shape} and {b.shape} cannot be compared")
    inside = np.ones(a.shape, bool) if mask is None else np.asarray(mask, bool)
    if not inside.any():
        raise InputError("the mask selects no voxels; give a mask with foreground")
    diff = a[inside] - b[inside]
    mse = float(np.mean(diff**2))
    psnr = math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)
    return {"mse": mse, "mae": float(np.mean(np.abs(diff))), "psnr": psnr}


def ms_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """3-D MS-SSIM of two volumes with the setting in the module docstring (1 = identical)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"images of shapes {np.shape(a)} and {np.shape(b)} cannot be compared")
    if min(np.shape(a)) < MS_SSIM_MIN_SIDE:
        raise InputError(f"MS-SSIM needs at least {MS_SSIM_MIN_SIDE} voxels per side; the images are {np.shape(a)}")
    metric = _monai_metrics().MultiScaleSSIMMetric(
        spatial_dims=3, data_range=data_range, kernel_size=MS_SSIM_KERNEL, kernel_sigma=MS_SSIM_SIGMA,
        weights=MS_SSIM_WEIGHTS)
    return float(metric(_volume(a), _volume(b)).mean())


def diversity(images, data_range: float = 1.0) -> float:
    """Mean MS-SSIM over all pairs of samples generated for one mask: lower = more diverse, 1 = identical."""
    images = list(images)
    if len(images) < 2:
        raise ValueError("diversity needs at least two samples")
    return float(np.mean([ms_ssim(a, b, data_range) for a, b in combinations(images, 2)]))


def mmd(generated, reference) -> float:
    """MONAI's unbiased linear-kernel MMD between two equally large sets of volumes (per-voxel scale)."""
    gen, ref = (torch.cat([_volume(v) for v in group]) for group in (generated, reference))
    if len(gen) != len(ref) or len(gen) < 2:
        raise ValueError(f"MMD needs two equally large sets of at least 2 volumes, got {len(gen)} and {len(ref)}")
    scale = 1 / math.sqrt(gen[0].numel())  # dot products become per-voxel means: independent of volume size
    return float(_monai_metrics().MMDMetric(y_mapping=lambda t: t * scale)(ref.double(), gen.double()))


def tumour_contrast(image, labels, tumour_labels=(2,), tissue_label: int = 1, shell_mm: float = 5.0,
                    spacing_mm=(1.0, 1.0, 1.0)) -> dict | None:
    """Mean intensity in the tumour minus the mean in a shell of surrounding tissue, and Cohen's d.

    The shell is the ``tissue_label`` voxels within ``shell_mm`` (physical, voxel centre to nearest tumour
    voxel centre) of the tumour. ``image`` and ``labels``: sitk images (spacing read from ``labels``) or
    arrays in the same order with ``spacing_mm`` in that order. None when tumour or shell is empty.
    """
    if isinstance(labels, sitk.Image):
        spacing_mm, labels = labels.GetSpacing()[::-1], sitk.GetArrayFromImage(labels)
    if isinstance(image, sitk.Image):
        image = sitk.GetArrayFromImage(image)
    image, labels = np.asarray(image, dtype=np.float64), np.asarray(labels)
    tumour = np.isin(labels, list(tumour_labels))
    if not tumour.any():
        return None
    tumour_image = sitk.GetImageFromArray(tumour.astype(np.uint8))
    tumour_image.SetSpacing([float(s) for s in spacing_mm][::-1])  # array order -> sitk's (x, y, z)
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        tumour_image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
    shell = (labels == tissue_label) & ~tumour & (distance <= shell_mm)
    if not shell.any():
        return None
    inside, around = image[tumour], image[shell]
    squares = ((inside - inside.mean()) ** 2).sum() + ((around - around.mean()) ** 2).sum()
    dof = inside.size + around.size - 2
    pooled = math.sqrt(squares / dof) if dof > 0 else 0.0  # pooled standard deviation
    difference = float(inside.mean() - around.mean())
    cohens_d = difference / pooled if pooled > 0 else (math.copysign(math.inf, difference) if difference else 0.0)
    return {"difference": difference, "cohens_d": cohens_d, "tumour_mean": float(inside.mean()),
            "shell_mean": float(around.mean()), "tumour_voxels": int(inside.size), "shell_voxels": int(around.size)}


MIN_SLICE_VOXELS = 20


def stripe_index(image: np.ndarray, brain: np.ndarray) -> float:
    """Stripes along z: the variance of the slice-to-slice change of the mean intensity inside ``brain`` along
    z, over the mean of the same along x and y (arrays (X, Y, Z); slices with at least MIN_SLICE_VOXELS brain
    voxels). Smooth anatomy changes slowly along every axis (~1); per-slice intensity scales make each axial
    slice jump against the next (the per-slice normalised MNI training images score 1.5-3.4, the same images
    scaled per volume 0.6-1.4)."""
    def jumps(axis: int) -> float:
        others = tuple(a for a in range(3) if a != axis)
        counts = brain.sum(axis=others)
        sums = np.where(brain, image, 0).sum(axis=others)
        means = sums[counts >= MIN_SLICE_VOXELS] / counts[counts >= MIN_SLICE_VOXELS]
        return float(np.var(np.diff(means)))

    return jumps(2) / max(0.5 * (jumps(0) + jumps(1)), 1e-12)


def fine_texture(image: np.ndarray, tissue: np.ndarray, erode: int = 2) -> float:
    """Voxel-scale texture: the standard deviation of the 3-D Laplacian of ``image`` inside ``tissue`` eroded
    by ``erode`` voxels (away from the brain's edge and the tumour's). Compared with the reference images'
    value: speckle scores higher, blur lower."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(tissue, iterations=erode)
    return float(ndimage.laplace(np.asarray(image, dtype=np.float64))[inner].std()) if inner.any() else float("nan")


# ------------------------------------------------------------------------------------------ folders


@dataclass
class Case:
    key: str
    generated: list[Path] = field(default_factory=list)
    reference: Path | None = None
    mask: Path | None = None


def _images_in(folder, what: str) -> dict[str, Path]:
    """Image files (top level, not hidden) of a folder by stem, or an InputError naming the problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"the {what} folder {folder} does not exist or is not a folder; check the path")
    files = {split_image_name(p)[0]: p for p in list_images(folder)}
    if not files:
        raise InputError(f"the {what} folder {folder} holds no .nii.gz/.nii/.nrrd/.mha images")
    return files


def _owner(stem: str, keys) -> str | None:
    """The longest key that ``stem`` equals or extends with a separator (see MATCHING_RULE)."""
    matches = [k for k in keys if stem == k or (stem.startswith(k) and stem[len(k)] in SEPARATORS)]
    return max(matches, key=len, default=None)


def find_cases(generated_dir, reference_dir=None, masks_dir=None) -> tuple[list[Case], list[str]]:
    """Cases (generated files with their reference and mask) and the names of unmatched generated files."""
    if reference_dir is None and masks_dir is None:
        raise InputError("give a reference folder, a masks folder or both, so generated files can be grouped")
    generated = {s: p for s, p in _images_in(generated_dir, "generated").items() if not s.endswith("_mask")}
    references = _images_in(reference_dir, "reference") if reference_dir is not None else {}
    masks = _images_in(masks_dir, "masks") if masks_dir is not None else {}
    cases = {key: Case(key, reference=references.get(key)) for key in (references or masks)}
    unmatched = []
    for stem, path in generated.items():
        owner = _owner(stem, cases)
        if owner is None:
            unmatched.append(path.name)
        else:
            cases[owner].generated.append(path)
    for case in cases.values():  # a mask may be named like the case or share its leading part
        owner = _owner(case.key, masks) or next((m for m in masks if _owner(m, [case.key])), None)
        case.mask = masks.get(owner)
    matched = [c for c in cases.values() if c.generated]
    if not matched:
        raise InputError(f"no generated file in {generated_dir} matches a reference or mask by name ({MATCHING_RULE})")
    return matched, unmatched


def _read(path: Path, shape=None) -> np.ndarray:
    # the engine's checked reader: NaN would turn every metric into noise (and ITK reads NIfTI NaN as 0)
    image = read_mask(path, "image")
    array = sitk.GetArrayFromImage(image)
    if shape is not None and array.shape != shape:
        raise InputError(f"{path} has size {image.GetSize()}, unlike the other files of its case; "
                         "compare images on the same grid")
    return array


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _load_case(case: Case):
    """Scaled samples and reference, the label array and its spacing (array order); all on one grid."""
    first = normalise(_read(case.generated[0]))
    samples = [first] + [normalise(_read(p, first.shape)) for p in case.generated[1:]]
    reference = normalise(_read(case.reference, first.shape)) if case.reference else None
    labels = _read(case.mask, first.shape) if case.mask else None
    spacing = sitk.ReadImage(str(case.mask)).GetSpacing()[::-1] if case.mask else (1.0, 1.0, 1.0)
    return samples, reference, labels, spacing


def _case_row(case: Case, samples, reference, labels, spacing, tumour_labels, tissue_label, shell_mm) -> dict:
    row = {"case": case.key, "samples": len(samples), "reference": case.reference is not None}
    if reference is not None:  # errors inside the mask's foreground (whole volume without a mask)
        errors = [masked_errors(s, reference, None if labels is None else labels != 0) for s in samples]
        row.update({k: _mean(e[k] for e in errors) for k in ("mse", "mae", "psnr")})
        row["ms_ssim_vs_reference"] = _mean(ms_ssim(s, reference) for s in samples)
    row["diversity_ms_ssim"] = diversity(samples) if len(samples) > 1 else None
    if labels is not None:
        def contrast(image):
            return tumour_contrast(image, labels, tumour_labels, tissue_label, shell_mm, spacing)

        generated = [c for c in map(contrast, samples) if c is not None]
        row["contrast_generated"] = _mean(c["difference"] for c in generated)
        row["cohens_d_generated"] = _mean(c["cohens_d"] for c in generated)
        real = contrast(reference) if reference is not None else None
        if real is not None:
            row["contrast_reference"], row["cohens_d_reference"] = real["difference"], real["cohens_d"]
    return row


SUMMARY_KEYS = ("ms_ssim_vs_reference", "mse", "mae", "psnr", "diversity_ms_ssim", "contrast_generated",
                "cohens_d_generated", "contrast_reference", "cohens_d_reference")


def evaluate_folders(generated_dir, reference_dir=None, masks_dir=None, *, tumour_labels=(2,),
                     tissue_label: int = 1, shell_mm: float = 5.0) -> dict:
    """Metrics over folders of generated / reference images and masks (matching: MATCHING_RULE); writes nothing.

    MMD compares the first generated sample of every case that has a reference with those references
    (cases on another grid than the first such case are left out; ``summary["mmd_cases"]`` counts them in).
    """
    cases, unmatched = find_cases(generated_dir, reference_dir, masks_dir)
    rows, firsts, references = [], [], []
    for case in cases:
        samples, reference, labels, spacing = _load_case(case)
        rows.append(_case_row(case, samples, reference, labels, spacing, tumour_labels, tissue_label, shell_mm))
        if reference is not None and (not firsts or reference.shape == firsts[0].shape):
            firsts.append(samples[0])  # kept for MMD: two volumes per case in memory
            references.append(reference)
    summary = {k: _mean(r.get(k) for r in rows) for k in SUMMARY_KEYS}
    summary["mmd"] = mmd(firsts, references) if len(firsts) >= 2 else None
    summary["mmd_cases"] = len(firsts)
    settings = {"scaling": "per-volume min-max to [0, 1]", "data_range": 1.0,
                "ms_ssim": {"kernel": MS_SSIM_KERNEL, "sigma": MS_SSIM_SIGMA, "weights": list(MS_SSIM_WEIGHTS)},
                "tumour_labels": list(tumour_labels), "tissue_label": tissue_label, "shell_mm": shell_mm,
                "matching": MATCHING_RULE}
    return {"settings": settings, "counts": {"cases": len(rows), "generated": sum(r["samples"] for r in rows),
            "unmatched_generated": unmatched}, "summary": summary, "cases": rows}


def montage_png(cases: list[Case], tumour_labels=(2,), max_cases: int = 6, max_samples: int = 3) -> sitk.Image:
    """RGB montage, one row per case: the reference (if any), then up to ``max_samples`` samples, each as
    :func:`preview.preview_png` (three slices through the tumour, outlined in red)."""
    rows = []
    for case in cases[:max_cases]:
        labels = _read(case.mask).transpose(2, 1, 0) if case.mask else None
        paths = ([case.reference] if case.reference else []) + case.generated[:max_samples]
        panels = []
        for path in paths:
            image = normalise(_read(path)).transpose(2, 1, 0)  # (X, Y, Z), as preview_png takes
            panel_labels = labels if labels is not None and labels.shape == image.shape else np.zeros(image.shape, int)
            panels.append(sitk.GetArrayFromImage(preview_png(image, panel_labels, tumour_labels)))
        rows.append(_concatenate(panels, axis=1))
    return sitk.GetImageFromArray(_concatenate(rows, axis=0), isVector=True)


def _concatenate(panels: list[np.ndarray], axis: int, gap: int = 6) -> np.ndarray:
    """Join RGB panels side by side (axis 1) or stacked (axis 0), padding the other axis with black."""
    other = 1 - axis
    size = max(p.shape[other] for p in panels)
    padded = []
    for panel in panels:
        pad = [(0, 0)] * 3
        pad[other], pad[axis] = (0, size - panel.shape[other]), (0, gap)
        padded.append(np.pad(panel, pad))
    return np.concatenate(padded, axis=axis)


def seam_score(image: sitk.Image, region: sitk.Image, band: int = 3) -> dict:
    """Mean gradient magnitude on the region's boundary and in ``band``-voxel bands just inside and just
    outside it; a visible seam shows as a boundary value well above both bands."""
    # copies, not views: a view of a temporary image reads freed memory once the image is collected
    gradient = sitk.GetArrayFromImage(sitk.GradientMagnitude(sitk.Cast(image, sitk.sitkFloat32)))

    def grown(radius: int) -> np.ndarray:
        op = sitk.BinaryDilate if radius > 0 else sitk.BinaryErode
        return sitk.GetArrayFromImage(op(region, [abs(radius)] * 3) if radius else region) > 0

    boundary = grown(1) & ~grown(-1)
    inside = grown(-1) & ~grown(-1 - band)
    outside = grown(1 + band) & ~grown(1)
    mean = lambda m: float(gradient[m].mean()) if m.any() else float("nan")  # noqa: E731
    return {"boundary": mean(boundary), "inside": mean(inside), "outside": mean(outside)}
