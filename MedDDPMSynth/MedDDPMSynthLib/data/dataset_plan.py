"""Which cases a synthetic dataset holds, their seeds, and which process makes which.

A *case* is one (mask, edit variant, sample number). Its id is ``<mask stem>_<edit>_s<NNN>`` (edit
``orig`` = the mask as given) and its seed depends only on the global seed and the case id (see
:func:`variant_seed`), never on the rank, the shard or the order of work, so a resumed, sharded or
multi-GPU run makes exactly the files of one uninterrupted process.

Work is split in *units*: one mask and a block of ``batch`` consecutive sample numbers (every edit
variant of them). A unit is one network pass per variant, always the same block, so a resumed or
sharded run batches exactly like one uninterrupted run (batched float results may differ from single
ones in the last bits). Shards are contiguous blocks of the sorted unit list.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import SimpleITK as sitk

from MedDDPMSynthLib.domain import tumour_edit
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.families import Family
from MedDDPMSynthLib.io.mask_io import list_images
from MedDDPMSynthLib.io.outputs import split_image_name

EDITS = ("none", "shift-grid", "scale-sweep")
ORIGINAL = "orig"  # the variant name of the unedited mask (always part of the dataset)


@dataclass(frozen=True)
class EditSettings:
    """Which batch edit makes extra variants of every mask, and its parameters."""

    kind: str = "none"
    step_mm: float = 10.0  # shift-grid: grid step
    extent_mm: float = 10.0  # shift-grid: largest shift per axis
    factors: tuple[float, ...] = (0.75, 1.25)  # scale-sweep

    def check(self) -> None:
        if self.kind not in EDITS:
            raise InputError(f"unknown --edits '{self.kind}'; use one of {', '.join(EDITS)}")
        if self.kind == "shift-grid" and not (self.step_mm > 0 and self.extent_mm >= self.step_mm):
            raise InputError("--shift-step must be positive and --shift-extent at least one step; e.g. 10 and 10")
        if self.kind == "scale-sweep" and (not self.factors or min(self.factors) <= 0):
            raise InputError("--scale-factors must be positive numbers, e.g. 0.75,1.25")
        if self.kind == "shift-grid":  # before any mask is read: a 0.01 mm step would be billions of variants
            tumour_edit.check_batch_count(
                tumour_edit.shift_grid_count(self.step_mm, self.extent_mm),
                f"--shift-step {self.step_mm:g} with --shift-extent {self.extent_mm:g}",
                "use a larger --shift-step or a smaller --shift-extent (the default 10 and 10 make 26 variants)")
        if self.kind == "scale-sweep":
            tumour_edit.check_batch_count(len(self.factors), "--scale-factors", "give fewer factors")


@dataclass(frozen=True)
class Unit:
    """One share of work: samples ``samples`` (consecutive, one network pass) of every variant of one mask."""

    mask: Path
    samples: tuple[int, ...]


@dataclass
class Variant:
    """One edit variant of a mask: its official label map (None: skipped) and the edit's record."""

    name: str
    label_map: sitk.Image | None
    record: dict = field(default_factory=dict)


def mask_stem(mask: Path) -> str:
    """Case-id-safe stem of a mask file name (``case7.nii.gz`` -> ``case7``)."""
    return _safe(split_image_name(Path(mask))[0])


def _safe(name: str) -> str:
    # nnU-Net splits file names at '_0000.nii.gz' only; keep ids to letters, digits, '_' and '-'
    return re.sub(r"[^A-Za-z0-9_-]", "", name.replace("+", "p").replace(".", "p"))


def case_id(stem: str, variant: str, sample: int) -> str:
    return f"{stem}_{variant}_s{sample:03d}"


SEED_SPAN = 1 << 20  # room for base seed + sample number below 2**31


def variant_seed(global_seed: int, stem: str, variant: str) -> int:
    """Base seed of a mask variant; its sample n uses base + n (the generate API's rule, so samples
    batch freely), i.e. a case's seed depends only on (global seed, case id)."""
    digest = hashlib.sha256(f"{int(global_seed)}/{stem}/{variant}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % ((1 << 31) - SEED_SPAN)


def list_masks(folder: Path) -> list[Path]:
    """Every label map in ``folder`` (sorted), or an InputError naming the problem and the fix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"the masks folder {folder} does not exist or is not a folder; check --masks")
    masks = list_images(folder)
    if not masks:
        raise InputError(f"no mask files (.nii.gz, .nii, .nrrd, .mha) in {folder}; put one label map per case there")
    stems: dict[str, Path] = {}
    for mask in masks:
        stem = mask_stem(mask)
        if not stem or stem in stems:
            other = f" and {stems[stem].name}" if stem in stems else ""
            raise InputError(f"mask {mask.name}{other} give the same case name '{stem}'; rename one of them")
        stems[stem] = mask
    return masks


def units(masks: list[Path], samples_per_mask: int, batch: int = 1) -> list[Unit]:
    if not 1 <= samples_per_mask <= SEED_SPAN:
        raise InputError(f"--samples-per-mask must be between 1 and {SEED_SPAN}")
    if batch < 1:
        raise InputError("--batch must be at least 1")
    blocks = [tuple(range(k, min(k + batch, samples_per_mask))) for k in range(0, samples_per_mask, batch)]
    return [Unit(mask, block) for mask in masks for block in blocks]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if text is None:
        return 0, 1
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise InputError(f"--shard '{text}' is not I/N (e.g. --shard 0/4 for the first of 4 shards)")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise InputError(
            f"--shard {index}/{count} is out of range; shards are numbered 0 to N-1, e.g. --shard 0/{max(count, 1)}"
        )
    return index, count


def _block(items: list, index: int, count: int) -> list:
    return items[index * len(items) // count: (index + 1) * len(items) // count]


def select(all_units: list[Unit], shard: tuple[int, int], rank: int = 0, world: int = 1) -> list[Unit]:
    """This process's units: block ``shard`` of the list, then block ``rank`` of that (torchrun)."""
    return _block(_block(all_units, *shard), rank, world)


def variants(official: sitk.Image, family: Family, edits: EditSettings) -> Iterator[Variant]:
    """The unedited map, then the edit batch's results (skipped ones with map None, as tumour_edit says)."""
    yield Variant(ORIGINAL, official, {"op": "none"})
    if edits.kind == "shift-grid":
        batch = tumour_edit.shift_grid(official, family, edits.step_mm, edits.extent_mm)
    elif edits.kind == "scale-sweep":
        batch = tumour_edit.scale_sweep(official, family, edits.factors)
    else:
        return
    for name, label_map, record in batch:
        yield Variant(_safe(name), label_map, record)
