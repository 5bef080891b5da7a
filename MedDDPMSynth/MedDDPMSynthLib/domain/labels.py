"""From the user's label values to the official label convention of a family, with clear refusals.

Whole-head: 1 head (non-tumour tissue), 2 tumour. BraTS: 1 necrotic, 2 oedema, 3 enhancing, 4 brain.
Users' masks use other values (raw BraTS has 4 = enhancing; Slicer exports number segments 1..n), so a
:class:`LabelMapping` says which input values mean which tissue (``--labels head=1,tumor=2+3``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.families import BRATS, Family

#: accepted spellings of each tissue name (the canonical name first)
ALIASES = {
    "head": ("head", "brainarea"),
    "tumor": ("tumor", "tumour"),
    "necrotic": ("necrotic", "ncr", "necrosis"),
    "edema": ("edema", "oedema", "ed"),
    "enhancing": ("enhancing", "et"),
    "brain": ("brain",),
    "background": ("background", "bg"),
}
MAX_VOXELS = 512**3  # beyond this a label map is almost certainly not a brain mask (and exhausts memory)
#: Detached tumour voxels (not touching the head/brain) accepted with a warning in physical mode: at most
#: 8 in total, one 2x2x2 dab of the smallest brush or a few stray clicks. That is a painting slip, far
#: below any lesion a user means to synthesise (the demo tumours are thousands of voxels) and below one
#: voxel of the 1.5 mm model grid at the usual 1 mm mask spacing; a larger detached region is a misplaced
#: tumour and stays an error.
STRAY_TUMOUR_VOXELS = 8


def _canonical(name: str, family: Family) -> str:
    for canonical, spellings in ALIASES.items():
        if name.lower() in spellings and (canonical in family.condition_names or canonical == "background"):
            return canonical
    raise InputError(
        f"unknown tissue name '{name}' for the {family.name} model; use "
        + ", ".join(f"{n}=VALUE" for n in (*family.condition_names, "background"))
    )


@dataclass(frozen=True)
class LabelMapping:
    """Input label values of each tissue of a family; values of ``background`` are ignored."""

    family: Family
    values: dict[str, tuple[int, ...]]

    @classmethod
    def parse(cls, text: str, family: Family) -> "LabelMapping":
        """``"head=1,tumor=2+3"`` -> mapping; every tissue of the family must be given."""
        values: dict[str, tuple[int, ...]] = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            match = re.fullmatch(r"([A-Za-z_]+)\s*=\s*(-?\d+(?:\s*\+\s*-?\d+)*)", item)
            if not match:
                raise InputError(f"cannot read '{item}' in --labels; write NAME=VALUE[+VALUE], e.g. head=1,tumor=2")
            name = _canonical(match.group(1), family)
            values[name] = values.get(name, ()) + tuple(int(v) for v in match.group(2).split("+"))
        missing = [n for n in family.condition_names if n not in values and n != "brain"]
        if missing:
            raise InputError(f"--labels does not say which value is {', '.join(missing)}; add e.g. {missing[0]}=2")
        used = [v for vs in values.values() for v in vs]
        if len(used) != len(set(used)):
            raise InputError("--labels gives one label value to two tissues; give each value to one tissue only")
        return cls(family, values)

    @classmethod
    def default(cls, family: Family, present: set[int]) -> "LabelMapping":
        """Official values; for BraTS, a map with 4 but no 3 is the raw BraTS convention (4 = enhancing)."""
        values = dict(zip(family.condition_names, ((v,) for v in family.condition_labels)))
        if family is BRATS and 4 in present and 3 not in present:
            values["enhancing"] = (4,)
            values.pop("brain")
        return cls(family, values)

    def describe(self) -> str:
        return ",".join(f"{k}={'+'.join(map(str, v))}" for k, v in self.values.items())


def check_values(array: np.ndarray) -> np.ndarray:
    """The array as int64 if it is a finite, integer-valued label map of sane size."""
    if array.size > MAX_VOXELS:
        raise InputError(
            f"the mask has {array.size:,} voxels (shape {array.shape}), more than the {MAX_VOXELS:,} a brain "
            "mask needs; crop or downsample it first"
        )
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise InputError("the mask contains NaN or infinite values; give an integer label map")
        if not np.array_equal(array, np.round(array)):
            raise InputError("the mask has non-integer values (a probability map?); give an integer label map")
    elif array.dtype.kind not in "iub":
        raise InputError(f"the mask has pixel type {array.dtype}; give an integer label map")
    _check_label_range(array)
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise InputError(f"the mask has negative label {array.min()}; labels must be 0 (background) or positive")
    return array


MAX_LABEL = 2**31 - 1  # far above any segmentation's label values, and exact in every integer type used


def _check_label_range(array: np.ndarray) -> None:
    """Refuse values no label map uses before they are cast to int64 (a uint64 or 1e20 would wrap
    around and be reported as a negative label)."""
    if array.size and array.max() > MAX_LABEL:
        top = int(array.max()) if array.dtype.kind in "iub" else float(array.max())
        raise InputError(
            f"the mask has label value {top}, larger than any label map uses (at most {MAX_LABEL}); "
            "give an integer label map with small label values (e.g. 0, 1, 2)"
        )


def to_official(mask: sitk.Image, family: Family, mapping: LabelMapping | None = None,
                warnings: list[str] | None = None, official: bool = False) -> sitk.Image:
    """The mask relabelled to the family's official values (uint8, same geometry), or an InputError.

    ``warnings``: a list to receive the anatomy findings that are not refused: a stray tumour fragment
    (at most :data:`STRAY_TUMOUR_VOXELS` detached voxels) and, with ``official=True``, every anatomy
    finding, because the official scripts check no anatomy and ``--geometry official`` must accept what
    they accept. Without a list every anatomy finding is an error (callers that cannot show a warning)."""
    array = check_values(sitk.GetArrayViewFromImage(mask))
    present = set(np.unique(array).tolist()) - {0}
    if not present:
        raise InputError("the mask is empty (every voxel is 0); paint the head/brain and the tumour first")
    mapping = mapping or LabelMapping.default(family, present)
    values = dict(mapping.values)
    if family is BRATS and "brain" not in values:  # brain = every other non-zero label
        tumour = {v for n, vs in values.items() if n != "background" for v in vs}
        values["brain"] = tuple(sorted(present - tumour - set(values.get("background", ()))))
    known = {v for vs in values.values() for v in vs}
    unknown = sorted(present - known)
    if unknown:
        raise InputError(
            f"the mask has label values {unknown[:6]} that the {family.name} model does not know "
            f"(it reads {mapping.describe()}); map them with --labels, e.g. --labels "
            + _labels_example(values, unknown)
        )
    out = np.zeros(array.shape, dtype=np.uint8)
    for name, label in zip(family.condition_names, family.condition_labels):
        out[np.isin(array, values.get(name, ()))] = label
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(mask)
    problems, stray_only = _anatomy_findings(image, family)
    if problems and (warnings is None or not (official or stray_only)):
        raise InputError(problems[0])
    if warnings is not None:
        why = ("--geometry official checks no anatomy, like the official script" if official
               else f"at most {STRAY_TUMOUR_VOXELS} stray voxels, kept as painted")
        warnings.extend(f"{problem} (generated anyway: {why})" for problem in problems)
    return image


def _anatomy_findings(official: sitk.Image, family: Family) -> tuple[list[str], bool]:
    """What is wrong with the anatomy (a head/brain must exist and every tumour component must touch
    it), one message each, and whether the only finding is a stray fragment small enough to warn about."""
    tissue_name, tissue_label = _tissue_of(family)
    stats = sitk.StatisticsImageFilter()
    stats.Execute(official == tissue_label)
    if stats.GetSum() == 0:
        return [
            f"the mask has no {tissue_name} voxels (label {tissue_label} after mapping); paint the "
            f"{tissue_name} around the tumour or map its label with --labels {tissue_name}=VALUE"
        ], False
    _, outside, shape = _detached_components(official, family)
    if not outside:
        return [], False
    voxels = sum(int(shape.GetNumberOfPixels(c)) for c in outside)
    return [
        f"{len(outside)} tumour region(s) ({voxels} voxels) lie outside the {tissue_name}, not touching "
        f"it; move the tumour inside the {tissue_name} or erase the stray voxels"
    ], voxels <= STRAY_TUMOUR_VOXELS


def _tissue_of(family: Family) -> tuple[str, int]:
    return family.tissue_name, family.tissue_label


def _detached_components(official: sitk.Image, family: Family):
    """(tumour components image, ids of those not touching the tissue, their statistics filter)."""
    _, tissue_label = _tissue_of(family)
    tumour = (official != 0) & (official != tissue_label)
    components = sitk.ConnectedComponent(tumour, True)
    touching = sitk.BinaryDilate(official == tissue_label, [1, 1, 1], sitk.sitkBox)
    shape = sitk.LabelIntensityStatisticsImageFilter()
    shape.Execute(components, sitk.Cast(touching, sitk.sitkUInt8))
    return components, [c for c in shape.GetLabels() if shape.GetMaximum(c) == 0], shape


def detached_tumour(official: sitk.Image, family: Family) -> np.ndarray:
    """Boolean (Z, Y, X) array of the tumour voxels in regions that do not touch the head/brain (the
    stray fragments :func:`to_official` accepted with a warning); all False for a clean mask."""
    components, outside, _ = _detached_components(official, family)
    return np.isin(sitk.GetArrayViewFromImage(components), outside) if outside else \
        np.zeros(sitk.GetArrayViewFromImage(official).shape, bool)


def _labels_example(values: dict[str, tuple[int, ...]], unknown: list[int]) -> str:
    """A --labels value that covers the unknown values too (as background here: the user picks the
    tissue), so the advice never repeats the mapping that was just refused."""
    parts = {n: list(v) for n, v in values.items() if v and n != "background"}
    parts["background"] = [*values.get("background", ()), *unknown[:6]]
    return ",".join(f"{n}={'+'.join(map(str, v))}" for n, v in parts.items())
