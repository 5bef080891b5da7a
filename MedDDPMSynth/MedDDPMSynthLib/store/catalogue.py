"""The model catalogue file: where the data home is, and reading/writing ``models.json`` safely.

A damaged or newer catalogue is reported, never silently rewritten; writes go through a temporary file
and a rename, so a reader never sees half a catalogue.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

from MedDDPMSynthLib.errors import MedDDPMError, OutputError
from MedDDPMSynthLib.io.outputs import atomic_write

HOME_ENV = "MEDDDPMSYNTH_HOME"
CATALOGUE_VERSION = 1


class CatalogueError(MedDDPMError):
    """The model catalogue (models.json) cannot be read or is damaged."""


def data_home() -> Path:
    override = os.environ.get(HOME_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    import platformdirs  # only needed when no home is set

    return Path(platformdirs.user_data_dir("MedDDPMSynth", appauthor=False))


def models_dir() -> Path:
    return data_home() / "models"


def catalogue_path() -> Path:
    return data_home() / "models.json"


def _damaged(path: Path, why: str) -> CatalogueError:
    return CatalogueError(
        f"the model catalogue {path} is damaged ({why}); repair it by hand, or delete it and import your "
        f"models again with 'medddpm-synth models import' (the files in {path.parent / 'models'} are kept)"
    )


def _is_plain_file_name(value: object) -> bool:
    # a tampered catalogue must never make 'remove' delete a file outside models/
    return isinstance(value, str) and value not in ("", ".", "..") and "\\" not in value and Path(value).name == value


def _read_catalogue() -> list[dict]:
    path = catalogue_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        reason = exc.strerror or exc
        raise CatalogueError(f"cannot read the model catalogue {path}: {reason}; check its permissions") from None
    except UnicodeDecodeError:
        raise _damaged(path, "not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _damaged(path, f"invalid JSON: {exc}") from None
    return _checked_entries(data, path)


def _checked_entries(data: object, path: Path) -> list[dict]:
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise _damaged(path, "expected an object with a 'models' list")
    version = data.get("version")
    if isinstance(version, int) and version > CATALOGUE_VERSION:
        raise CatalogueError(
            f"the model catalogue {path} has version {version}, written by a newer MedDDPMSynth; update MedDDPMSynth"
        )
    if version != CATALOGUE_VERSION:
        raise _damaged(path, f"unknown version {version!r}")
    for entry in data["models"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and _is_plain_file_name(entry.get("file"))):
            raise _damaged(path, f"bad entry {str(entry)[:80]}")
        for key, kind in (("grid_xyz", int), ("spacing_mm", float)):
            if not _is_triple(entry.get(key), kind):
                raise _damaged(path, f"model '{entry['name']}' has {key} {entry.get(key)!r}, not three positive numbers")
    return data["models"]


def _is_triple(value: object, kind: type) -> bool:
    """Three positive finite numbers (whole ones for a grid): a null or string grid would fail later
    deep inside the geometry code."""
    if not isinstance(value, list) or len(value) != 3:
        return False
    allowed = (int,) if kind is int else (int, float)
    return all(isinstance(v, allowed) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value)


def _write_catalogue(entries: list[dict]) -> None:
    """Temporary file in the same folder, then a rename: readers never see a half-written catalogue."""
    path = catalogue_path()
    text = json.dumps({"version": CATALOGUE_VERSION, "models": entries}, indent=2) + "\n"
    try:
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable=True)
    except OutputError as exc:
        raise OutputError(f"{exc}; or set {HOME_ENV} to another folder") from None


def _unlink_quietly(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _find(entries: list[dict], name: str) -> dict | None:
    # names differ by more than case: stored file names must not clash on case-insensitive disks.
    # A catalogue edited by hand (or older) may still hold 'Mine' and 'mine': the exact name wins, and a
    # name that matches several entries only by case is refused rather than guessed (remove deletes files).
    exact = [e for e in entries if e["name"] == name]
    if exact:
        return exact[0]
    folded = [e for e in entries if e["name"].lower() == name.lower()]
    if len(folded) > 1:
        raise CatalogueError(
            f"'{name}' matches {len(folded)} models that differ only in case "
            f"({', '.join(repr(e['name']) for e in folded)}); give the exact name"
        )
    return folded[0] if folded else None


def file_shared(entries: list[dict], entry: dict) -> bool:
    """Whether another entry uses ``entry``'s file (the same name, or on a case-insensitive disk a name
    differing only in case: one file), so deleting it would lose that model."""
    path = models_dir() / entry["file"]
    for other in entries:
        if other is entry:
            continue
        other_path = models_dir() / other["file"]
        if other["file"] == entry["file"] or (path.exists() and other_path.exists() and os.path.samefile(path, other_path)):
            return True
    return False
