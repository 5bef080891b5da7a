"""Local re-generation: regenerate only around the (edited) tumour, keep the previous image elsewhere.

The region is the union of the old and the new tumour, dilated by a margin in mm, on the mask's own
grid. Sampling in-paints it on the model grid (see :class:`sampling.Inpainting`); the result is then
composited on the mask's grid, so every voxel outside the region is the previous file's value, bit for bit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.families import Family
from MedDDPMSynthLib.domain.geometry import GridMapping, same_grid
from MedDDPMSynthLib.io.mask_io import read_image, read_mask
from MedDDPMSynthLib.domain.labels import to_official
from MedDDPMSynthLib.io.outputs import split_image_name


@dataclass
class PreviousResult:
    images: list[sitk.Image]  # one per modality, on the mask's grid, as written (raw or unit intensity)
    intensity: str
    old_official: sitk.Image  # the mask the previous images were generated from, official labels


def _read_image(path: Path) -> sitk.Image:
    if not path.is_file():
        raise InputError(f"previous image not found: {path}; give the image written by the earlier run")
    return read_image(path, "previous image")


def modality_files(path: Path, modalities: tuple[str, ...]) -> list[Path]:
    """The image files of one case: ``path`` itself for a one-modality model, else its sibling files
    NAME_<modality>EXT for every modality (a previous result to keep, or a scan to insert a tumour into)."""
    if len(modalities) == 1:
        return [path]
    stem, ext = split_image_name(path)
    for mod in modalities:
        if stem.endswith(f"_{mod}"):
            base = stem[: -len(mod) - 1]
            return [path.with_name(f"{base}_{m}{ext}") for m in modalities]
    raise InputError(
        f"{path.name} does not end with one of _{', _'.join(modalities)}; give one of the previous run's "
        "modality files"
    )


def _provenance_beside(keep: Path) -> dict:
    path = keep.parent / "provenance.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def load_previous(keep: Path, previous_mask: Path | None, family: Family, intensity: str) -> PreviousResult:
    """Previous images, their intensity convention and their mask (given, or found via provenance.json)."""
    images = [_read_image(p) for p in modality_files(Path(keep), family.modalities)]
    provenance = _provenance_beside(Path(keep))
    previous_intensity = provenance.get("intensity", intensity)
    if previous_intensity != intensity:
        raise InputError(
            f"the previous image was written with --intensity {previous_intensity}; use the same for re-generation"
        )
    if previous_mask is None:
        masks = [o for o in provenance.get("outputs", []) if split_image_name(Path(o))[0].endswith("_mask")]
        if not masks:
            raise InputError("cannot tell which mask the previous image came from; give it with --previous-mask")
        previous_mask = Path(keep).parent / masks[0]
    return PreviousResult(images, previous_intensity, to_official(read_mask(previous_mask), family))


#: a margin beyond this covers a whole head anyway, and a ball of that many voxels takes hours to dilate
MAX_MARGIN_MM = 100.0


def check_margin(margin_mm: float) -> None:
    """--margin must be a finite number from 0 to MAX_MARGIN_MM."""
    if not (isinstance(margin_mm, (int, float)) and math.isfinite(margin_mm) and margin_mm >= 0):
        raise InputError(f"--margin {margin_mm} is not a number of mm from 0 to {MAX_MARGIN_MM:g}; give e.g. --margin 10")
    if margin_mm > MAX_MARGIN_MM:
        raise InputError(
            f"--margin {margin_mm:g} mm is more than {MAX_MARGIN_MM:g} mm, which already covers a whole head; "
            f"give --margin {MAX_MARGIN_MM:g} or less (or regenerate the whole image: drop --keep)"
        )


def regeneration_region(old: sitk.Image, new: sitk.Image, family: Family, margin_mm: float) -> sitk.Image:
    """uint8 mask on the new mask's grid: old tumour, new tumour and their surroundings within the margin."""
    if not same_grid(old, new):
        raise InputError("the previous mask and the new mask are on different grids; edit the previous mask, do not resample it")
    tumour_labels = list(family.tumour_labels)
    union = sitk.Or(_is_any(old, tumour_labels), _is_any(new, tumour_labels))
    if margin_mm > 0:
        radius = [max(1, math.ceil(margin_mm / s)) for s in new.GetSpacing()]
        union = sitk.BinaryDilate(union, radius, sitk.sitkBall)
    changed = sitk.Cast(old != new, sitk.sitkUInt8)  # any other edit (e.g. a repainted head) counts too
    return sitk.Cast(sitk.Or(union, changed), sitk.sitkUInt8)


def _is_any(image: sitk.Image, labels: list[int]) -> sitk.Image:
    array = np.isin(sitk.GetArrayViewFromImage(image), labels).astype(np.uint8)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def model_inputs(previous: PreviousResult, region: sitk.Image, mapping: GridMapping) -> tuple[np.ndarray, np.ndarray]:
    """Previous images (C, X, Y, Z) in [-1, 1] and the boolean region (X, Y, Z), on the model grid."""
    for image in previous.images:
        if not same_grid(image, region):
            raise InputError("the previous image is not on the new mask's grid; regenerate from the mask it was made for")
    arrays = [mapping.image_to_model(image, background=-1.0) for image in previous.images]
    known = np.stack(arrays)
    if previous.intensity == "unit":
        known = known * 2.0 - 1.0
    region_model = mapping.labels_to_model(region) > 0
    return known, region_model


def composite(new: sitk.Image, previous: sitk.Image, region: sitk.Image) -> sitk.Image:
    """New values inside the region, the previous image's exact voxels (and pixel type) outside."""
    inside = sitk.GetArrayViewFromImage(region) > 0
    before = sitk.GetArrayFromImage(previous)
    values = sitk.GetArrayViewFromImage(new)
    if before.dtype.kind in "iu":  # an integer scan stays integer: round and clip to its type
        info = np.iinfo(before.dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    out = sitk.GetImageFromArray(np.where(inside, values, before).astype(before.dtype))
    out.CopyInformation(previous)
    return out
