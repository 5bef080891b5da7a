"""``medddpm-synth models ...``: list, import, verify, remove and describe the stored checkpoints.

The main command line adds this with :func:`add_parser` and calls :func:`run`; a ``MedDDPMError``
propagates to it (it prints ``error: <message>`` and exits with ``error.exit_code``).
"""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from MedDDPMSynthLib.cli.numbers import number_list
from MedDDPMSynthLib.store import models
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.model.presets import ANY_T, parse_sampler_spec, preset_settings, sampler_spec

EPILOG = """examples:
  medddpm-synth models list
  medddpm-synth models import ~/Downloads/model_128.pt
  medddpm-synth models import model_brats.pt --name brats
  medddpm-synth models import my_run.pt --name mine --grid 96,96,96 --spacing 2,2,2
  medddpm-synth models verify model_128
  medddpm-synth models info model_128 --json
  medddpm-synth models remove mine
  medddpm-synth models export run1/model-last.pt -o my_model.safetensors --dtype fp16

Models are stored in $MEDDDPMSYNTH_HOME (default: the user data folder, see 'models list').
'demo' is the built-in demo model and always available."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``models`` command to an ``argparse`` sub-parsers object; the new parser."""
    parser = subparsers.add_parser(
        "models",
        help="list, import, verify or remove Med-DDPM checkpoints",
        description="Manage the Med-DDPM checkpoints known by name (imported copies plus the built-in 'demo').",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="show the available models")
    listing.add_argument("--json", action="store_true", help="print the entries as JSON")

    adding = actions.add_parser("import", help="validate a checkpoint and copy it into the model store")
    adding.add_argument("path", metavar="PATH", help="a Med-DDPM .pt or .safetensors checkpoint (only read)")
    adding.add_argument("--name", help="name to use it by (default: the file name without extension)")
    adding.add_argument("--grid", metavar="X,Y,Z", help="training grid in voxels (default: the family's grid)")
    adding.add_argument("--spacing", metavar="A,B,C", help="training voxel spacing in mm (default: the family's)")
    adding.add_argument("--overwrite", action="store_true", help="replace an imported model of the same name")

    exporting = actions.add_parser(
        "export", help="write a checkpoint's EMA weights as a compact .safetensors file that carries its grid")
    exporting.add_argument("path", metavar="CKPT", help="a Med-DDPM checkpoint, e.g. a run's model-last.pt (only read)")
    exporting.add_argument("-o", "--output", required=True, metavar="OUT.safetensors", help="the file to write")
    exporting.add_argument("--dtype", choices=tuple(models.EXPORT_DTYPES), default="fp16",
                           help="weight precision (default fp16: half the size; the schedule stays fp32)")
    exporting.add_argument("--grid", metavar="X,Y,Z", help="model grid (default: the run's config.json beside CKPT)")
    exporting.add_argument("--spacing", metavar="A,B,C", help="voxel spacing in mm (default: the run's config.json)")
    exporting.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    exporting.add_argument("--preview", metavar="NAME:STEPS[:SPACING[:PRECISION[:ETA]]]",
                           help="the fast sampler the file recommends as its 'preview' preset, e.g. ddim:25:uniform:bf16:1 "
                                "(default: the source file's recommendation, else none: the built-in preview)")

    for action, text in (("verify", "re-hash a stored model and check that it loads"),
                         ("remove", "delete an imported model and its file"),
                         ("info", "show everything known about one model")):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("name", metavar="NAME", help="model name (see 'models list')")
        if action == "info":
            sub.add_argument("--json", action="store_true", help="print the entry as JSON")
    parser.set_defaults(run=run)  # the main command line dispatches through args.run
    return parser


def _parse_triple(text: str | None, cast, option: str, example: str) -> list | None:
    if text is None:
        return None
    values = list(number_list(text, cast, ",x") or ())
    if len(values) != 3:
        raise InputError(f"{option} {text!r} must be three comma-separated numbers, e.g. {option} {example}")
    return values


def _triple(values: Sequence | None, sep: str = "x") -> str:
    return sep.join(f"{v:g}" for v in values) if values else "-"


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _list(args) -> None:
    entries = models.list_models()
    if args.json:
        print(json.dumps(entries, indent=2))
        return
    rows = [["NAME", "FAMILY", "GRID", "SPACING (mm)", "STEPS", "SIZE", "NOTE"]]
    for e in entries:
        note = e.get("note") or (f"official {e['known_as']}" if e.get("known_as") else "")
        rows.append([e["name"], e.get("family", "-"), _triple(e.get("grid_xyz")), _triple(e.get("spacing_mm")),
                     str(e.get("timesteps", "-")), _size(e.get("size_bytes")), note])
    print(_table(rows))
    print(f"\ncatalogue: {models.catalogue_path()}")


def _import(args) -> None:
    entry = models.import_model(
        args.path,
        name=args.name,
        grid_xyz=_parse_triple(args.grid, int, "--grid", "128,128,128"),
        spacing_mm=_parse_triple(args.spacing, float, "--spacing", "1.5,1.5,1.5"),
        overwrite=args.overwrite,
    )
    known = f", official {entry['known_as']}" if entry["known_as"] else ""
    print(f"imported '{entry['name']}': {entry['family']}, grid {_triple(entry['grid_xyz'])} at "
          f"{_triple(entry['spacing_mm'])} mm, {entry['timesteps']} steps, {_size(entry['size_bytes'])}{known}")
    print(f"stored as {models.models_dir() / entry['file']}")
    print(f"sha256 {entry['sha256']}")


def _export(args) -> None:
    entry = models.export_model(
        args.path, args.output, dtype=args.dtype,
        grid_xyz=_parse_triple(args.grid, int, "--grid", "64,64,64"),
        spacing_mm=_parse_triple(args.spacing, float, "--spacing", "3,3,3"),
        overwrite=args.overwrite, preview=parse_sampler_spec(args.preview) if args.preview else None,
    )
    print(f"wrote {args.output}: {entry['family']}, grid {_triple(entry['grid_xyz'])} at "
          f"{_triple(entry['spacing_mm'])} mm, {entry['timesteps']} steps, {_size(entry['size_bytes'])}")
    print(f"sha256 {entry['sha256']}")


def _verify(args) -> None:
    entry = models.verify(args.name)
    print(f"ok: '{entry['name']}' is intact (sha256 {entry['sha256'][:16]}...) and loads ({entry['family']})")


def _remove(args) -> None:
    entry = models.remove(args.name)
    path = models.models_dir() / entry["file"]
    if entry.get("file_kept"):
        print(f"removed '{entry['name']}'; kept {path}, which another model in the catalogue uses")
    else:
        print(f"removed '{entry['name']}' and deleted {path}")


def _info(args) -> None:
    entry = models.info(args.name)
    if args.json:
        print(json.dumps(entry, indent=2))
        return
    width = max(map(len, entry)) + 2  # "key:" and a space, values aligned
    for key, value in entry.items():
        if key == "config" and isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = _triple(value, ",")
        elif key == "preview" and value is None:
            value = f"(none recommended: the built-in {sampler_spec(preset_settings('preview', ANY_T))})"
        print(f"{key + ':':<{width}}{'-' if value is None else value}")


_ACTIONS = {"list": _list, "import": _import, "export": _export, "verify": _verify, "remove": _remove, "info": _info}


def run(args: argparse.Namespace) -> int:
    """Carry out one ``models`` action; 0 on success (errors are raised as ``MedDDPMError``)."""
    _ACTIONS[args.models_command](args)
    return 0
