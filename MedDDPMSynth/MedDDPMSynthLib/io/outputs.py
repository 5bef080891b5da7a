"""Writing generation results: all files or none, never over an existing file unless asked.

Everything is first written into a hidden staging folder beside the destination and moved into place
only when every file is complete, so a failure, a full disk or a cancel leaves nothing partial behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import SimpleITK as sitk

from MedDDPMSynthLib.errors import OutputError
from MedDDPMSynthLib.io.write_errors import short_reason, write_advice

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def image_extension(path: str | os.PathLike) -> str | None:
    """The image extension ``path`` ends with (``.nii.gz`` counts as one), else None."""
    name = str(path).lower()
    return next((ext for ext in IMAGE_EXTENSIONS if name.endswith(ext)), None)


def split_image_name(path: Path) -> tuple[str, str]:
    """``brain.nii.gz`` -> (``brain``, ``.nii.gz``)."""
    ext = image_extension(path) or ""
    return path.name[: len(path.name) - len(ext)], ext


def check_destinations(paths: Iterable[Path], overwrite: bool, inputs: Iterable[Path | None] = ()) -> None:
    """Refuse (before any work) outputs that exist or folders that cannot be written, and any output
    that is one of ``inputs`` (even with --overwrite: replacing what is being read loses it)."""
    paths = list(paths)
    _refuse_inputs(paths, [Path(i) for i in inputs if i is not None])
    # a dangling symlink "exists" as a directory entry: replacing it is overwriting too
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise OutputError(
            f"{existing[0]} already exists{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}; "
            "choose another output or add --overwrite"
        )
    for folder in {p.parent for p in paths}:
        probe = folder
        while not probe.exists():
            if probe.is_symlink():  # a link to a missing folder: creating the folder would fail (or follow it)
                raise OutputError(f"{probe} is a link to {os.readlink(probe)}, which does not exist; create that "
                                  "folder or choose another output")
            probe = probe.parent
        if not probe.is_dir():
            raise OutputError(f"cannot create folder {folder}: {probe} is a file; choose another output")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise OutputError(f"no permission to write in {probe}; choose another output folder")


def _same_file(a: Path, b: Path) -> bool:
    """Same file by resolved path (symlinks followed) or, when both exist, by inode (hard links)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except (OSError, RuntimeError):  # a symlink loop: not the same as a readable input
        return False


def _refuse_inputs(paths: list[Path], inputs: list[Path]) -> None:
    for path in paths:
        for source in inputs:
            if _same_file(path, source):
                raise OutputError(f"the output {path} is the input {source}; writing it would destroy the input "
                                  "(--overwrite does not apply to inputs); choose another output")


def check_disk_space(folder: Path, needed_bytes: int) -> None:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise OutputError(
            f"not enough disk space in {probe}: {needed_bytes / 2**20:.0f} MiB needed, "
            f"{free / 2**20:.0f} MiB free; free some space or choose another output folder"
        )


def new_temp_file(folder: Path, stem: str, suffix: str = "") -> Path:
    """A new empty hidden file ``<stem>.<random>.tmp<suffix>`` in ``folder`` (same file system as the
    destination: the rename is atomic). Unlike mkstemp's 0600 files it gets the usual permissions (umask),
    so that a data home shared by a group stays readable after the rename."""
    while True:
        path = Path(folder) / f"{stem}.{secrets.token_hex(6)}.tmp{suffix}"
        try:
            with open(path, "xb"):
                return path
        except FileExistsError:
            continue


def atomic_write(path: Path, write: Callable[[Path], None], durable: bool = False) -> None:
    """The one write-then-rename: ``write(temporary)`` writes a hidden file in the same folder, which then
    replaces ``path``, so readers see the old file or the new one, never half of one. ``durable``: the data
    reach the disk (fsync) before the rename, for files whose loss costs more than a re-run (checkpoints,
    the model catalogue). A failed write (full disk, no permission) is one :class:`OutputError`."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if image_extension(path) == ".nii.gz" else path.suffix  # writers read it
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = new_temp_file(path.parent, f".{path.name[: len(path.name) - len(suffix)]}", suffix)
        write(temporary)
        if durable:
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except (OSError, RuntimeError) as exc:  # torch.save and SimpleITK report a full disk as RuntimeError
        raise OutputError(f"cannot write {path}: {short_reason(exc)}; {write_advice(exc)}") from None
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


class StagedOutput:
    """Collects files in a staging folder; :meth:`commit` moves them all to their destinations."""

    def __init__(self, anchor: Path):
        self.anchor = anchor  # the folder the staging area lives in (same file system => atomic moves)
        self._stage: Path | None = None
        self._moves: list[tuple[Path, Path]] = []

    def __enter__(self) -> "StagedOutput":
        # remember the first folder we create, to remove it again if nothing gets committed
        missing = [p for p in (self.anchor, *self.anchor.parents) if not p.exists()]
        self._created = missing[-1] if missing else None
        self.anchor.mkdir(parents=True, exist_ok=True)
        self._stage = Path(tempfile.mkdtemp(prefix=".medddpm-partial-", dir=self.anchor))
        return self

    def path_for(self, destination: Path) -> Path:
        staged = self._stage / f"{len(self._moves):03d}_{destination.name}"
        self._moves.append((staged, destination))
        return staged

    def write_image(self, image: sitk.Image, destination: Path) -> None:
        self._guard(lambda p: sitk.WriteImage(image, str(p), useCompression=True), destination)

    def write_json(self, data: dict, destination: Path) -> None:
        self._guard(lambda p: p.write_text(json.dumps(data, indent=2, default=str) + "\n"), destination)

    def copy_file(self, source: Path, destination: Path) -> None:
        self._guard(lambda p: shutil.copyfile(source, p), destination)

    def _guard(self, write, destination: Path) -> None:
        try:
            write(self.path_for(destination))
        except (OSError, RuntimeError) as exc:  # SimpleITK reports a full disk as RuntimeError
            raise OutputError(f"could not write {destination.name} ({short_reason(exc)}); {write_advice(exc)}") from None

    def commit(self) -> list[Path]:
        for staged, destination in self._moves:
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, destination)
        self._created = None
        return [d for _, d in self._moves]

    def __exit__(self, *exc) -> None:
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
        if self._created is not None:  # failed or cancelled before commit: leave no new folders either
            shutil.rmtree(self._created, ignore_errors=True)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. the name is too long itself
        return False


def check_name_lengths(paths: Iterable[Path]) -> None:
    """Refuse output names longer than the file system allows, before any work (the OS would only
    say so at the first write, as an OSError deep inside a writer)."""
    for path in paths:
        probe = Path(path).absolute().parent
        while probe != probe.parent and not _exists(probe):
            probe = probe.parent
        try:
            limit = os.pathconf(probe, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):  # Windows or an exotic file system
            limit = 255
        for part in Path(path).parts:
            if len(os.fsencode(part)) > limit:
                raise OutputError(
                    f"the output name {part[:40]}... has {len(os.fsencode(part))} bytes, more than the {limit} this "
                    "file system allows; choose a shorter output name"
                )


# suffixes of files that are not volumes: "-o synth.png" must not silently become a folder of that name
NON_VOLUME_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".dcm", ".npy", ".npz", ".h5",
                       ".hdf5", ".mgz", ".mgh", ".img", ".hdr", ".gz", ".zip", ".json", ".csv", ".txt", ".pt", ".nifti")


def check_folder_name(path: Path, option: str = "-o") -> None:
    """A folder output whose name ends in a file suffix (``synth.png``) is a mistake: refuse it and name
    the accepted image suffixes."""
    suffix = Path(path).suffix.lower()
    if suffix in NON_VOLUME_SUFFIXES:
        raise OutputError(
            f"{option} {path}: '{suffix}' is not an image format this tool writes; end the name in "
            f"{', '.join(ext for ext in IMAGE_EXTENSIONS if ext not in ('.nhdr', '.mhd'))} for one file, "
            "or give a folder name without a file suffix"
        )
