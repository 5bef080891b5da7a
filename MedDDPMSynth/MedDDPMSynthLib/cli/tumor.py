"""``medddpm-synth tumor ...``: shift, scale, rotate, move, remove or add a tumour in a mask file.

Masks are read in any label convention (``--labels``) and written in the family's official labels as
uint8 with the input's exact geometry, each with a JSON record of the edit beside it (batch: one
``records.json``). Writing is all-or-nothing and refuses existing files unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedDDPMSynthLib.cli.numbers import number_list
from MedDDPMSynthLib.domain import tumour_edit
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.families import FAMILIES
from MedDDPMSynthLib.domain.geometry import ras_to_lps
from MedDDPMSynthLib.io.mask_io import read_mask
from MedDDPMSynthLib.domain.labels import ALIASES, LabelMapping, check_values, to_official
from MedDDPMSynthLib.io.outputs import StagedOutput, check_destinations, check_folder_name, check_name_lengths, split_image_name

EPILOG = """examples:
  medddpm-synth tumor shift --mask m.nii.gz --vector 10,0,-5 -o shifted.nii.gz
  medddpm-synth tumor scale --mask m.nii.gz --factor 1.5 -o big.nii.gz
  medddpm-synth tumor rotate --mask seg.nii.gz --family brats --angles 0,0,30 -o rot.nii.gz
  medddpm-synth tumor move --mask m.nii.gz --to 20,-10,30 --ras -o moved.nii.gz
  medddpm-synth tumor remove --mask m.nii.gz --component 2 -o fewer.nii.gz
  medddpm-synth tumor add --mask m.nii.gz --center 0,20,30 --radius 12 -o two.nii.gz
  medddpm-synth tumor shift --mask m.nii.gz --grid-step 10 --extent 40 -o shifts/
  medddpm-synth tumor scale --mask m.nii.gz --sweep 2.0:0.5:20 -o scales/

Coordinates: physical mm in LPS (as ITK/SimpleITK); --ras for Slicer's RAS. A value starting with
'-' needs '=': --vector=-10,0,5. Angles: degrees about the fixed x, then y, then z axis.
--family auto: whole-head if --labels names head/tumor, else BraTS if the mask has a label above 2.
The tumour never leaves the head/brain: what would is clipped, and the record says how much.
Output masks use the family's official labels (whole-head 1 head, 2 tumour; BraTS 1/2/3, 4 brain)."""

SINGLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def _numbers(text: str, count: int | None = 3) -> list[float]:
    values = list(number_list(text.replace(" ", ""), float) or ())
    if not values or (count is not None and len(values) != count):
        raise argparse.ArgumentTypeError(f"'{text}' is not {count or 'some'} comma-separated numbers")
    return values


def _factor(text: str) -> list[float]:
    values = _numbers(text, None)
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"'{text}' is not S or SX,SY,SZ")
    return values


def _sweep(text: str) -> list[float]:
    parts = text.split(":")
    try:
        start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        raise argparse.ArgumentTypeError(f"'{text}' is not START:STOP:COUNT, e.g. 2.0:0.5:20") from None
    if len(parts) != 3 or count < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not START:STOP:COUNT with COUNT >= 1")
    if count > tumour_edit.MAX_BATCH_EDITS:  # before allocating COUNT factors
        raise argparse.ArgumentTypeError(f"'{text}' asks for {count:,} scaled masks, more than the "
                                         f"{tumour_edit.MAX_BATCH_EDITS:,} one batch allows; give a smaller COUNT")
    return np.linspace(start, stop, count).tolist()


def _sublabels(text: str) -> dict[str, float]:
    try:
        return {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(",") if item.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=FRACTION,..., e.g. edema=1,enhancing=0.6") from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``tumor`` command to an ``argparse`` sub-parsers object; the new parser."""
    parser = subparsers.add_parser(
        "tumor", help="shift, scale, rotate, move, remove or add a tumour in a mask",
        description="Edit the tumour of a label mask in physical space; writes a new mask.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="tumor_command", metavar="ACTION", required=True)
    specs = {
        "shift": "translate by a vector (mm); --grid-step/--extent: a batch grid",
        "scale": "scale about the centroid; --sweep: a batch of factors",
        "rotate": "rotate about the centroid (degrees)",
        "move": "move the centroid to a point (mm)",
        "remove": "erase the tumour; it becomes head/brain",
        "add": "add a ball tumour (BraTS: nested sub-labels)",
    }
    for name, text in specs.items():
        _add_action(actions.add_parser(name, help=text, description=text, epilog=EPILOG,
                                       formatter_class=argparse.RawDescriptionHelpFormatter), name)
    parser.set_defaults(run=run)
    return parser


def _add_action(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--mask", required=True, type=Path, help="input label mask")
    p.add_argument("-o", "--output", required=True, type=Path, help="output mask file (batch: a folder)")
    p.add_argument("--family", choices=("auto", *FAMILIES), default="auto", help="label family (default auto)")
    p.add_argument("--labels", metavar="NAME=V,...", help="which mask values are which tissue, e.g. head=1,tumor=2")
    if name != "add":
        p.add_argument("--component", type=int, help="edit one connected component only (1 = largest)")
    p.add_argument("--ras", action="store_true", help="vectors, points and angles are in RAS, not LPS")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    if name == "shift":
        p.add_argument("--vector", type=_numbers, metavar="X,Y,Z", help="shift in mm")
        p.add_argument("--grid-step", type=float, metavar="MM", help="batch: grid step in mm")
        p.add_argument("--extent", type=float, default=40.0, metavar="MM", help="batch: grid half-width (40)")
    elif name == "scale":
        p.add_argument("--factor", type=_factor, metavar="S|SX,SY,SZ", help="scale factor(s), > 1 enlarges")
        p.add_argument("--sweep", type=_sweep, metavar="START:STOP:N", help="batch: N factors, e.g. 2.0:0.5:20")
    elif name == "rotate":
        p.add_argument("--angles", type=_numbers, required=True, metavar="AX,AY,AZ", help="degrees")
    elif name == "move":
        p.add_argument("--to", type=_numbers, required=True, metavar="X,Y,Z", help="target centroid in mm")
    elif name == "add":
        p.add_argument("--center", type=_numbers, required=True, metavar="X,Y,Z", help="ball centre in mm")
        p.add_argument("--radius", type=float, required=True, metavar="MM", help="ball radius in mm")
        p.add_argument("--sublabels", type=_sublabels, metavar="NAME=F,...",
                       help="BraTS radius fractions (default edema=1,enhancing=0.6,necrotic=0.35)")


# ---------------------------------------------------------------------------------------- running


def _load(args) -> tuple[sitk.Image, str]:
    mask = read_mask(args.mask)
    family = args.family if args.family != "auto" else _guess_family(mask, args.labels)
    fam = FAMILIES[family]
    mapping = LabelMapping.parse(args.labels, fam) if args.labels else None
    warnings: list[str] = []  # a stray tumour voxel or two: edited anyway, and said
    official = to_official(mask, fam, mapping, warnings)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return official, family


def _guess_family(mask: sitk.Image, labels: str | None) -> str:
    """--labels naming head/tumour, or labels above 2 (BraTS 3/4), decide the family."""
    if labels:
        names = {item.split("=")[0].strip().lower() for item in labels.split(",")}
        return "whole_head" if names & {*ALIASES["head"], *ALIASES["tumor"]} else "brats"
    return "brats" if check_values(sitk.GetArrayViewFromImage(mask)).max() > 2 else "whole_head"


def _lps(values, args) -> list[float]:
    """RAS -> LPS: negate x and y. Angles too: F Rz Ry Rx F = Rz(az) Ry(-ay) Rx(-ax) for F = diag(-1, -1, 1)."""
    values = list(values)
    return ras_to_lps(values) if args.ras else values


def _single_edit(args, label_map, family):
    component = getattr(args, "component", None)
    command = args.tumor_command
    if command == "shift":
        return tumour_edit.shift(label_map, family, _lps(_required(args.vector, "--vector"), args), component)
    if command == "scale":
        factor = _required(args.factor, "--factor")
        return tumour_edit.scale(label_map, family, factor[0] if len(factor) == 1 else factor, component)
    if command == "rotate":
        return tumour_edit.rotate(label_map, family, _lps(args.angles, args), component)
    if command == "move":
        return tumour_edit.move_to(label_map, family, _lps(args.to, args), component)
    if command == "remove":
        return tumour_edit.remove(label_map, family, component)
    return tumour_edit.add(label_map, family, _lps(args.center, args), args.radius, args.sublabels)


def _required(value, option: str):
    if value is None:
        raise InputError(f"give {option} (or a batch option: shift --grid-step MM, scale --sweep A:B:N)")
    return value


def _batch(args, label_map, family):
    batch = getattr(args, "grid_step", None) is not None or getattr(args, "sweep", None) is not None
    if batch and (getattr(args, "vector", None) or getattr(args, "factor", None)):
        raise InputError("give either one edit (--vector / --factor) or a batch (--grid-step / --sweep), not both")
    if getattr(args, "grid_step", None) is not None:
        return tumour_edit.shift_grid(label_map, family, args.grid_step, args.extent, args.component)
    if getattr(args, "sweep", None) is not None:
        return tumour_edit.scale_sweep(label_map, family, args.sweep, args.component)
    return None


def _write_single(args, label_map, family) -> list[Path]:
    name, ext = split_image_name(args.output)
    if ext not in SINGLE_SUFFIXES:
        raise InputError(f"the output {args.output} must end in {', '.join(SINGLE_SUFFIXES)} "
                         "(a folder only for --grid-step / --sweep)")
    sidecar = args.output.with_name(name + ".json")
    check_destinations([args.output, sidecar], args.overwrite, inputs=[args.mask])
    new_map, record = _single_edit(args, label_map, family)
    record["input"] = str(args.mask)
    with StagedOutput(args.output.parent) as stage:
        stage.write_image(new_map, args.output)
        stage.write_json(record, sidecar)
        return stage.commit()


def _write_batch(args, items) -> list[Path]:
    folder = args.output
    if split_image_name(folder)[1]:
        raise InputError(f"batch output {folder} must be a folder, not an image file name")
    check_folder_name(folder)
    check_destinations([folder / "records.json"], args.overwrite, inputs=[args.mask])
    records = []
    with StagedOutput(folder) as stage:
        for name, new_map, record in items:
            records.append(record)
            if new_map is not None:
                destination = folder / f"{name}.nii.gz"
                check_destinations([destination], args.overwrite, inputs=[args.mask])
                stage.write_image(new_map, destination)
        written = sum(1 for r in records if "skipped" not in r)
        stage.write_json({"input": str(args.mask), "written": written, "records": records}, folder / "records.json")
        return stage.commit()


def run(args: argparse.Namespace) -> int:
    """Carry out one ``tumor`` action; 0 on success (errors are raised as ``MedDDPMError``)."""
    check_name_lengths([args.output])
    label_map, family = _load(args)
    items = _batch(args, label_map, family)
    if items is None:
        files = _write_single(args, label_map, family)
        print(f"wrote {files[0]} (record: {files[1].name})")
    else:
        files = _write_batch(args, items)
        print(f"wrote {len(files) - 1} mask(s) to {args.output}; records and skipped results: records.json")
    return 0
