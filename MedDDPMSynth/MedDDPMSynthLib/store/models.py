"""The model manager: a catalogue of imported Med-DDPM checkpoints in the user's data folder.

Layout of the data home (``$MEDDDPMSYNTH_HOME`` or the platform's user data folder)::

    <home>/models.json      catalogue {"version": 1, "models": [entry, ...]}, written atomically
    <home>/models/<file>    one validated copy of each imported checkpoint

An import validates the file by loading it, hashes it, copies it under a temporary name, renames it and
updates the catalogue last; any failure restores the previous state. The source file is only read.
The built-in "demo" model is never stored in the catalogue: its entry is described on the fly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch

from MedDDPMSynthLib.store.catalogue import (  # noqa: F401 (part of this module's interface)
    CATALOGUE_VERSION,
    HOME_ENV,
    CatalogueError,
    _find,
    _read_catalogue,
    _unlink_quietly,
    _write_catalogue,
    catalogue_path,
    data_home,
    file_shared,
    models_dir,
)
from MedDDPMSynthLib.model.checkpoint import (
    file_sha256, infer_config, load_checkpoint, model_options, read_state_dict, save_safetensors,
)
from MedDDPMSynthLib.model.api import check_grid_size
from MedDDPMSynthLib.model.model_grid import training_grid
from MedDDPMSynthLib.model.presets import PREVIEW_KEYS, preview_metadata, recommended_preview
from MedDDPMSynthLib.model.sampling import SamplerSettings
from MedDDPMSynthLib.errors import CheckpointError, InputError, MedDDPMError, OutputError
from MedDDPMSynthLib.io.outputs import atomic_write, check_destinations, new_temp_file
from MedDDPMSynthLib.domain.families import family_for_channels
from MedDDPMSynthLib.resources import demo_model_file

DEMO_NAME = "demo"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9_-]{1,16}")

#: source tree, installed Slicer extension or pip wheel: see MedDDPMSynthLib.resources
BUNDLED_DEMO = demo_model_file()
BUNDLED_NOTE = "bundled demo model"
#: names another file to use as "demo" (the test suite points it at the tiny random model, for speed)
DEMO_ENV = "MEDDDPMSYNTH_DEMO_MODEL"

# sha256 -> {"name": "model_128.pt", "family": ..., "grid_xyz": [...], "spacing_mm": [...]}.
# Empty on purpose: the sha256 of an official release is added here only once it has been verified
# against the published download, so that ``known_as`` never vouches for an unchecked file.
KNOWN_RELEASES: dict[str, dict[str, Any]] = {}


def demo_model_path() -> Path:
    """The bundled demo model, or the file named by ``MEDDDPMSYNTH_DEMO_MODEL``."""
    override = os.environ.get(DEMO_ENV, "").strip()
    return Path(override).expanduser().resolve() if override else BUNDLED_DEMO


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InputError(
            f"'{name}' is not a valid model name: use 1-64 letters, digits, '_', '.' or '-', starting with "
            "a letter or digit (choose one with --name)"
        )
    if name.lower() == DEMO_NAME:
        raise InputError(f"the name '{DEMO_NAME}' is reserved for the built-in demo model; choose another --name")
    return name


def _check_grid(grid: object, divisor: int) -> list[int]:
    values = list(grid) if isinstance(grid, (list, tuple)) else []
    whole = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in values)
    if len(values) != 3 or not whole:
        raise InputError(f"grid {grid!r} must be three positive whole numbers X,Y,Z (e.g. --grid 128,128,128)")
    values = [int(v) for v in values]
    if any(v % divisor for v in values):
        example = ",".join(str(max(divisor, round(v / divisor) * divisor)) for v in values)
        raise InputError(
            f"grid {values} is not a multiple of {divisor} on every axis, which this model needs; "
            f"give --grid with sizes divisible by {divisor} (e.g. --grid {example})"
        )
    check_grid_size(values)
    return values


def _check_spacing(spacing: object) -> list[float]:
    values = list(spacing) if isinstance(spacing, (list, tuple)) else []
    if len(values) != 3 or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values
    ):
        raise InputError(f"spacing {spacing!r} must be three positive numbers in mm (e.g. --spacing 1.5,1.5,1.5)")
    return [float(v) for v in values]


def _describe(path: Path, grid_xyz: Sequence[int] | None = None, spacing_mm: Sequence[float] | None = None,
              loaded: tuple | None = None) -> dict:
    """Entry fields that come from the file itself; loading it is the validation. ``loaded``: the
    (diffusion, info) of this file when the caller has just loaded it, so it is not read twice."""
    # CheckpointError propagates with its message intact
    diffusion, info = loaded if loaded is not None else load_checkpoint(path)
    config = diffusion.config
    family = family_for_channels(config.in_channels, config.out_channels)
    sha256 = file_sha256(path)
    known = KNOWN_RELEASES.get(sha256, {})
    grid_xyz, spacing_mm, _ = training_grid(path, info, family, grid_xyz, spacing_mm, known)
    entry = {
        "family": family.name,
        "grid_xyz": _check_grid(grid_xyz, config.divisor),
        "spacing_mm": _check_spacing(spacing_mm),
        "timesteps": diffusion.num_timesteps,
        **model_options(info).to_metadata(),
        "config": dataclasses.asdict(config),
        "sha256": sha256,
        "size_bytes": path.stat().st_size,
        "container": info.container,
        "step": info.step,
        "known_as": known.get("name"),
        "preview": recommended_preview(info.metadata),
    }
    return json.loads(json.dumps(entry))  # tuples -> lists: the same values the catalogue gives back


def _stored_suffix(source: Path, container: str) -> str:
    """The source's extension; a non-empty one keeps distinct names on distinct file names."""
    if _SAFE_SUFFIX.fullmatch(source.suffix):
        return source.suffix
    return ".safetensors" if container == "safetensors" else ".pt"


def _copy_to_temp(source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_file(folder, ".import")
    try:
        shutil.copyfile(source, tmp)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _move_aside(path: Path) -> Path | None:
    """Rename an existing file out of the way so that a failed import can put it back."""
    if not path.exists():
        return None
    aside = new_temp_file(path.parent, f".{path.name}.old")
    os.replace(path, aside)
    return aside


def _install(source: Path, entry: dict, old: dict | None, entries: list[dict]) -> None:
    """Copy, rename, then update the catalogue; on any failure the previous state is restored."""
    folder = models_dir()
    final = folder / entry["file"]
    tmp = aside = None
    placed = False
    try:
        tmp = _copy_to_temp(source, folder)
        if file_sha256(tmp) != entry["sha256"]:
            raise CheckpointError(f"{source} changed while being imported; import it again once it is complete")
        aside = _move_aside(final)
        os.replace(tmp, final)
        placed = True
        _write_catalogue([e for e in entries if e is not old] + [entry])
    except BaseException:
        _unlink_quietly(tmp)
        if placed:
            _unlink_quietly(final)
        if aside is not None:
            os.replace(aside, final)
        raise
    _unlink_quietly(aside)
    previous = folder / old["file"] if old is not None else None
    # on a case-insensitive disk 'Foo.pt' and 'foo.pt' are the file just installed
    if previous is not None and previous.exists() and not os.path.samefile(previous, final):
        _unlink_quietly(previous)


def import_model(
    path: str | os.PathLike,
    name: str | None = None,
    grid_xyz: Sequence[int] | None = None,
    spacing_mm: Sequence[float] | None = None,
    overwrite: bool = False,
) -> dict:
    """Validate a checkpoint, copy it into the data home and add it to the catalogue; its entry."""
    source = Path(path).expanduser()
    name = _check_name(source.stem if name is None else name)
    entries = _read_catalogue()  # a damaged catalogue stops the import before anything is copied
    old = _find(entries, name)
    if old is not None and not overwrite:
        raise InputError(
            f"a model named '{old['name']}' exists already; choose another --name, or add --overwrite to replace it"
        )
    described = _describe(source, grid_xyz, spacing_mm)
    entry = {
        "name": name,
        **described,
        "file": name + _stored_suffix(source, described["container"]),
        "source": str(source.resolve()),
        "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        _install(source, entry, old, entries)
    except OSError as exc:
        raise OutputError(
            f"cannot copy {source} into {models_dir()}: {exc.strerror or exc}; free disk space, or set "
            f"{HOME_ENV} to a writable folder"
        ) from None
    return entry


EXPORT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def export_model(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    dtype: str = "fp16",
    grid_xyz: Sequence[int] | None = None,
    spacing_mm: Sequence[float] | None = None,
    overwrite: bool = False,
    preview: SamplerSettings | None = None,
) -> dict:
    """Write a checkpoint's sampling weights (EMA) as a compact safetensors file with its grid as metadata.

    This is how a trained run becomes a shippable model (the bundled demo model is made this way): the
    optimiser state and the raw weights are dropped, floats are cast to ``dtype`` (the schedule buffers
    stay fp32) and ``grid_xyz``/``spacing_mm`` travel inside the file, so ``--model FILE`` needs no
    options. Grid and spacing default to the file's metadata, else the training run's ``config.json`` beside
the checkpoint (:func:`model_grid.training_grid`). ``preview``: the fast sampler the file recommends as its
    ``preview`` preset (presets.py), else the one the source file recommends, if any.
    Returns the new file's description (as in the catalogue).
    """
    source, destination = Path(source).expanduser(), Path(destination).expanduser()
    if dtype not in EXPORT_DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; use one of {', '.join(EXPORT_DTYPES)}")
    if destination.suffix != ".safetensors":
        raise InputError(f"{destination} must end in .safetensors")
    # the shared check: an existing file (or dangling link) needs --overwrite, the source is never replaced
    check_destinations([destination], overwrite, inputs=[source])
    state, info = read_state_dict(source)
    config, timesteps = infer_config(state, source)
    grid, spacing, _ = training_grid(source, info, None, grid_xyz, spacing_mm)
    if not grid or not spacing:
        raise InputError(f"the grid of {source} is unknown; give it with --grid X,Y,Z and --spacing A,B,C")
    grid, spacing = _check_grid(list(grid), config.divisor), _check_spacing(list(spacing))
    recommended = preview_metadata(preview, timesteps) if preview is not None else \
        {k: v for k, v in info.metadata.items() if k in PREVIEW_KEYS}
    metadata = {"grid_xyz": ",".join(map(str, grid)), "spacing_mm": ",".join(f"{v:g}" for v in spacing),
                "source_step": str(info.step if info.step is not None else ""), "format": "medddpm-synth model",
                **model_options(info).to_metadata(), **recommended}
    destination.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(destination, state, metadata, EXPORT_DTYPES[dtype])
    return _describe(destination)


_DEMO_DESCRIBED: dict[tuple[str, int, int], dict] = {}


def _describe_demo(path: str, size: int, mtime_ns: int, loaded: tuple | None = None) -> dict:
    # keyed on size and mtime: listing models must not re-hash an unchanged file every time
    key = (path, size, mtime_ns)
    if key not in _DEMO_DESCRIBED:
        described = _describe(Path(path), None, None, loaded)
        if len(_DEMO_DESCRIBED) >= 4:
            _DEMO_DESCRIBED.clear()
        _DEMO_DESCRIBED[key] = described
    return _DEMO_DESCRIBED[key]


def demo_entry() -> dict:
    """The synthesised catalogue entry of the built-in demo model."""
    path = demo_model_path()
    note = BUNDLED_NOTE if path == BUNDLED_DEMO else f"{path.name}, chosen by {DEMO_ENV}"
    entry: dict[str, Any] = {"name": DEMO_NAME, "builtin": True, "note": note, "file": path.name, "source": str(path)}
    if not path.is_file():
        return {**entry, "available": False, "note": f"not installed (expected {path})"}
    try:
        stat = path.stat()
        described = _describe_demo(str(path), stat.st_size, stat.st_mtime_ns)
    except MedDDPMError as exc:  # a damaged demo must not break 'models list'
        return {**entry, "available": False, "note": f"the demo model cannot be used: {exc}"}
    return {**entry, **described, "available": True, "imported_at": None}


def list_models() -> list[dict]:
    """The demo entry first, then the imported models by name."""
    entries = sorted(_read_catalogue(), key=lambda e: e["name"].lower())
    return [demo_entry()] + entries


def _available_names() -> str:
    return ", ".join(e["name"] for e in list_models())


def get_entry(name: str) -> dict:
    if str(name).lower() == DEMO_NAME:
        return demo_entry()
    entry = _find(_read_catalogue(), str(name))
    if entry is None:
        raise InputError(f"no model named '{name}'; available: {_available_names()} (see 'medddpm-synth "
                         "models list')")
    return entry


def _entry_path(entry: dict) -> Path:
    if entry.get("builtin"):
        return demo_model_path()
    return models_dir() / entry["file"]


def _existing_file(entry: dict) -> Path:
    path = _entry_path(entry)
    if path.is_file():
        return path
    if entry.get("builtin"):
        raise CheckpointError(
            f"the demo model is not installed (expected {demo_model_path()}); reinstall MedDDPMSynth, or import a Med-DDPM checkpoint with "
            "'medddpm-synth models import PATH' and use its name"
        )
    raise CheckpointError(
        f"the file of model '{entry['name']}' is missing ({path}); import it again with 'medddpm-synth models "
        f"import PATH --name {entry['name']} --overwrite', or drop it with 'medddpm-synth models remove "
        f"{entry['name']}'"
    )


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """Path of a model given as an existing file, "demo", or the name of an imported model."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        raise CheckpointError(f"{candidate} is a folder, not a model file; give the path of the .pt/.safetensors file")
    text = str(name_or_path)
    if text.lower() == DEMO_NAME:
        return _existing_file(demo_entry())
    entry = _find(_read_catalogue(), text)
    if entry is None:
        raise InputError(
            f"'{text}' is neither a model file nor the name of an imported model (available: "
            f"{_available_names()}); see 'medddpm-synth models list', or add a checkpoint with "
            "'medddpm-synth models import PATH'"
        )
    return _existing_file(entry)


def load_named_model(name_or_path: str | os.PathLike, device: str = "cpu"):
    """Load "demo", an imported model (with its catalogue grid) or a checkpoint file."""
    from MedDDPMSynthLib.model.api import load_model

    if str(name_or_path).lower() == DEMO_NAME and not Path(name_or_path).expanduser().is_file():
        return _load_demo(device)
    path = resolve_model(name_or_path)
    is_file = Path(name_or_path).expanduser().is_file()
    entry = None if is_file else get_entry(str(name_or_path))
    if entry is not None and not entry.get("builtin"):
        check_unchanged(entry, path)
    grid = tuple(entry["grid_xyz"]) if entry else None
    spacing = tuple(entry["spacing_mm"]) if entry else None
    return load_model(path, device=device, grid_xyz=grid, spacing_mm=spacing)


def _load_demo(device: str):
    """The demo model, read once: the load that describes it (its grid and spacing) is the one used
    (describing and then loading it read and checked the file twice)."""
    from MedDDPMSynthLib.model.api import model_from_checkpoint

    path = demo_model_path()
    if not path.is_file():
        _existing_file(demo_entry())  # raises the "not installed" message
    diffusion, info = load_checkpoint(path)
    stat = path.stat()
    entry = _describe_demo(str(path), stat.st_size, stat.st_mtime_ns, (diffusion, info))
    return model_from_checkpoint(diffusion, info, path, device, tuple(entry["grid_xyz"]), tuple(entry["spacing_mm"]))


def verify(name: str) -> dict:
    """Re-hash the stored file against the catalogue and load it; the entry with ``verified``."""
    entry = get_entry(name)
    path = _existing_file(entry)
    actual = file_sha256(path)
    if actual != entry.get("sha256"):
        raise _changed(entry, path, f"its sha256 is {actual[:16]}... instead of {str(entry.get('sha256'))[:16]}...")
    load_checkpoint(path)
    return {**entry, "path": str(path), "verified": True}


def _changed(entry: dict, path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"the file of model '{entry['name']}' ({path}) has changed or is damaged since it was imported ({why}); "
        f"import the original again with 'medddpm-synth models import PATH --name {entry['name']} --overwrite'"
    )


VERIFIED_CACHE = ".verified.json"  # in models/: file -> the stat of its last full hash that matched


def _stat_key(path: Path) -> list[int]:
    # ctime and inode change whenever the file is replaced or rewritten, even if size and mtime are faked
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def check_unchanged(entry: dict, path: Path) -> None:
    """The stored file is the one imported: its sha256 equals the catalogue's. Cheap on every load: the
    full hash runs only when size, times or inode differ from the last verified ones (cached in models/)."""
    key = _stat_key(path)
    if isinstance(entry.get("size_bytes"), int) and key[0] != entry["size_bytes"]:
        raise _changed(entry, path, f"{key[0]:,} bytes instead of {entry['size_bytes']:,}")
    cache_path = models_dir() / VERIFIED_CACHE
    try:
        cache = json.loads(cache_path.read_text())
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        cache = {}
    if cache.get(entry["file"]) == [*key, entry.get("sha256")]:
        return
    actual = file_sha256(path)
    if actual != entry.get("sha256"):
        raise _changed(entry, path, f"its sha256 is {actual[:16]}... instead of {str(entry.get('sha256'))[:16]}...")
    cache[entry["file"]] = [*key, actual]
    try:  # best effort: a read-only data home only costs a re-hash next time
        atomic_write(cache_path, lambda tmp: tmp.write_text(json.dumps(cache)))
    except OutputError:
        pass


def remove(name: str) -> dict:
    """Delete an imported model (file and entry); the removed entry."""
    if str(name).lower() == DEMO_NAME:
        raise InputError("the demo model is built in and cannot be removed")
    entries = _read_catalogue()
    entry = _find(entries, str(name))
    if entry is None:
        raise InputError(f"no model named '{name}'; available: {_available_names()}")
    # catalogue first: an interruption leaves an unlisted file, never an entry without its file
    _write_catalogue([e for e in entries if e is not entry])
    path = models_dir() / entry["file"]
    if file_shared(entries, entry):  # another model's file too: keep it
        return {**entry, "file_kept": True}
    try:
        _unlink_quietly(path)
    except OSError as exc:
        raise OutputError(
            f"model '{entry['name']}' left the catalogue but {path} could not be deleted ({exc.strerror or exc}); "
            "delete it by hand"
        ) from None
    return entry


def info(name: str) -> dict:
    """The entry plus where its file is and whether it exists."""
    entry = get_entry(name)
    path = _entry_path(entry)
    return {**entry, "path": str(path), "file_exists": path.is_file()}
