"""Where a synthetic dataset's files go, and its index files: dataset.json, manifest.csv, contact sheet.

``nnunet`` (default) is the nnU-Net v2 raw layout: ``imagesTr/<case>_<CCCC>.nii.gz`` (one file per
modality), ``labelsTr/<case>.nii.gz``, ``dataset.json``. It is the one nnU-Net writer of the project: the
Slicer module's export (``MedDDPMSynthSlicerLib.export``) adds its cases through :class:`Layout` and
:func:`updated_dataset_json`, so both write the same channel names and labels into one folder. ``folders`` is the layout ``medddpm-synth train``
reads: ``masks/<case>.nii.gz`` and ``images/<case>.nii.gz`` (BraTS ``images/<case>_<modality>.nii.gz``).
Both add ``provenance/<case>.json``, ``manifest.csv``, ``contact_sheet.png``, the run settings
``medddpm_dataset.json`` and per-process logs in ``logs/``.

Every index file is a pure function of the complete cases (sorted, no times), so a resumed or sharded
run writes the same bytes as one uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.families import Family
from MedDDPMSynthLib.io.outputs import atomic_write
from MedDDPMSynthLib.io.preview import preview_png

FORMATS = ("nnunet", "folders")
FILE_ENDING = ".nii.gz"
MANIFEST_COLUMNS = ("case", "mask", "mask_sha256", "edit", "sample", "seed", "files")
CONTACT_SHEET_CASES = 36  # the first cases by id; enough to eyeball a run, cheap to redraw
CONTACT_SHEET_COLUMNS = 6


class Layout:
    """File names of one dataset folder in one format."""

    def __init__(self, root: Path, fmt: str, family: Family):
        self.root, self.format, self.family = Path(root), fmt, family
        self.settings = self.root / "medddpm_dataset.json"
        self.manifest = self.root / "manifest.csv"
        self.dataset_json = self.root / "dataset.json"
        self.contact_sheet = self.root / "contact_sheet.png"
        self.logs = self.root / "logs"
        self.lock = self.root / ".medddpm-dataset.lock"

    def images(self, case: str) -> list[Path]:
        if self.format == "nnunet":
            return [self.root / "imagesTr" / f"{case}_{c:04d}{FILE_ENDING}" for c in range(self.family.image_channels)]
        if self.family.image_channels == 1:
            return [self.root / "images" / f"{case}{FILE_ENDING}"]
        return [self.root / "images" / f"{case}_{m}{FILE_ENDING}" for m in self.family.modalities]

    def label(self, case: str) -> Path:
        return self.root / ("labelsTr" if self.format == "nnunet" else "masks") / f"{case}{FILE_ENDING}"

    def provenance(self, case: str) -> Path:
        return self.root / "provenance" / f"{case}.json"

    def case_files(self, case: str) -> list[Path]:
        return [*self.images(case), self.label(case), self.provenance(case)]

    def relative(self, paths: list[Path]) -> str:
        return ";".join(p.relative_to(self.root).as_posix() for p in paths)


@contextlib.contextmanager
def locked(layout: Layout):
    """Exclusive lock on the dataset folder (processes of one run update the index files in turn)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: one process per folder there, nothing to serialise
        yield
        return
    with open(layout.lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda p: p.write_text(text))


def read_manifest(layout: Layout) -> dict[str, dict]:
    """case -> row of the manifest (empty when there is none yet)."""
    if not layout.manifest.is_file():
        return {}
    try:
        with open(layout.manifest, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("case", "files") if c not in (reader.fieldnames or ())]
            if missing:
                raise ValueError(f"no column {', '.join(missing)}")
            return {row["case"]: row for row in reader if row.get("case")}
    except (UnicodeDecodeError, csv.Error, ValueError) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)[:80]
        raise InputError(
            f"{layout.manifest} is damaged ({reason}); delete it and run the same command again (the cases are "
            "made again), or choose another -o folder"
        ) from None


def complete_cases(layout: Layout, rows: dict[str, dict]) -> dict[str, dict]:
    """Manifest rows whose files all exist (the rest are redone)."""
    return {case: row for case, row in rows.items()
            if row.get("files") and all((layout.root / f).is_file() for f in row["files"].split(";"))}


def write_manifest(layout: Layout, rows: dict[str, dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for case in sorted(rows):
        writer.writerow({k: rows[case][k] for k in MANIFEST_COLUMNS})
    text = buffer.getvalue()
    atomic_write(layout.manifest, lambda p: p.write_text(text))


DESCRIPTION = ("Synthetic MRI made by medddpm-synth (Med-DDPM) from label masks; "
               "per-case provenance in provenance/<case>.json")


def nnunet_dataset_json(family: Family, num_training: int, description: str = DESCRIPTION) -> dict:
    """nnU-Net v2 dataset.json: the family's channel names and official labels (consecutive already:
    BraTS 4 = brain)."""
    labels = {"background": 0, **{n: v for v, n in sorted(zip(family.condition_labels, family.condition_names))}}
    return {
        "channel_names": {str(c): name for c, name in enumerate(family.channel_names)},
        "labels": labels,
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
        "description": description,
    }


def updated_dataset_json(layout: Layout, num_training: int, description: str = DESCRIPTION) -> dict:
    """The folder's dataset.json for ``num_training`` cases: the existing one with its count updated, or a
    new one. An existing file that describes other channels or labels (another family's dataset) is refused."""
    wanted = nnunet_dataset_json(layout.family, num_training, description)
    if not layout.dataset_json.is_file():
        return wanted
    path = layout.dataset_json
    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError):
        raise InputError(f"{path} is not valid JSON; fix or delete it, or export into another folder") from None
    if not isinstance(existing, dict) or existing.get("channel_names") != wanted["channel_names"] \
            or existing.get("labels") != wanted["labels"]:
        found = existing.get("channel_names") if isinstance(existing, dict) else None
        raise InputError(f"{path} describes other channels or labels ({found}; these cases have "
                         f"{wanted['channel_names']}); export these volumes into another dataset folder")
    return {**existing, "numTraining": int(num_training)}


def case_ids(layout: Layout) -> set[str]:
    """The cases whose label file the folder holds."""
    folder = layout.label("x").parent
    return {p.name[: -len(FILE_ENDING)] for p in folder.glob(f"*{FILE_ENDING}")} if folder.is_dir() else set()


def _thumbnail(layout: Layout, case: str, tumour_labels: list[int]) -> np.ndarray:
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(layout.images(case)[0]))).transpose(2, 1, 0)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(layout.label(case)))).transpose(2, 1, 0)
    return sitk.GetArrayFromImage(preview_png(image, labels, tumour_labels, min_height=96))


def write_contact_sheet(layout: Layout, cases: list[str], tumour_labels: list[int]) -> None:
    """Three orthogonal slices of the first modality per case (tumour outlined), in a grid."""
    tiles = [_thumbnail(layout, case, tumour_labels) for case in sorted(cases)[:CONTACT_SHEET_CASES]]
    if not tiles:
        return
    height = max(t.shape[0] for t in tiles) + 4
    width = max(t.shape[1] for t in tiles) + 4
    tiles = [np.pad(t, ((0, height - t.shape[0]), (0, width - t.shape[1]), (0, 0))) for t in tiles]
    columns = min(CONTACT_SHEET_COLUMNS, len(tiles))
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[i: i + columns], axis=1) for i in range(0, len(tiles), columns)]
    sheet = sitk.GetImageFromArray(np.concatenate(rows, axis=0), isVector=True)
    atomic_write(layout.contact_sheet, lambda p: sitk.WriteImage(sheet, str(p)))


def write_index(layout: Layout, tumour_labels: list[int]) -> int:
    """Rewrite manifest, dataset.json (nnU-Net) and contact sheet from the complete cases; their count."""
    rows = complete_cases(layout, read_manifest(layout))
    write_manifest(layout, rows)
    if layout.format == "nnunet":
        write_json(layout.dataset_json, nnunet_dataset_json(layout.family, len(rows)))
    write_contact_sheet(layout, list(rows), tumour_labels)
    return len(rows)
