"""``medddpm-synth insert`` (a synthetic tumour into a real scan) and ``anonymize`` (a synthetic head
with the scan's head/brain outline): argument parsing around :mod:`.insertion` and :mod:`.anonymize`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from MedDDPMSynthLib.progress_bar import progress_bar

from MedDDPMSynthLib.workflows.anonymize import anonymize
from MedDDPMSynthLib.devices import DEVICES
from MedDDPMSynthLib.io.mask_io import read_mask
from MedDDPMSynthLib.domain.head_mask import METHODS
from MedDDPMSynthLib.workflows.insertion import insert_tumour
from MedDDPMSynthLib.cli.sampler_options import SAMPLER_HELP, add_sampler_options, announcer, resolve_sampler
from MedDDPMSynthLib.store.models import load_named_model
from MedDDPMSynthLib.io.outputs import StagedOutput, check_destinations, check_folder_name, split_image_name
from MedDDPMSynthLib.protocol import wrote_line
from MedDDPMSynthLib.workflows.regenerate import modality_files

INSERT_EPILOG = f"""examples:
  medddpm-synth insert --scan t1c.nii.gz --tumor tumour.nii.gz --model wholehead -o out/
  medddpm-synth insert --scan case_t1.nii.gz --tumor seg.nii.gz --model brats -o out/   # finds _t1ce, _t2, _flair
  medddpm-synth insert --scan t1c.nii.gz --tumor tumour.nii.gz --model wholehead -o out/ --sampler exact

{SAMPLER_HELP}
"""
ANON_EPILOG = f"""examples:
  medddpm-synth anonymize scan.nii.gz -o anon/ --model wholehead
  medddpm-synth anonymize scan.nii.gz -o anon/ --model wholehead --sampler exact

{SAMPLER_HELP}
"""


def _progress_bar(quiet: bool, announce):
    state = {"bar": None}

    def progress(done: int, total: int) -> None:
        announce()  # the sampler line, once sampling has started (after every refusal)
        if state["bar"] is None:
            state["bar"] = progress_bar(total=total, unit="step", desc="generating", file=sys.stderr, disable=quiet)
        state["bar"].update(done - state["bar"].n)

    return progress, state


def add_parser(commands) -> None:
    p = commands.add_parser("insert", help="insert a synthetic tumour into a real scan",
                            description=__doc__, epilog=INSERT_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scan", required=True, type=Path, help="the scan (BraTS: the _t1 file; siblings are found)")
    p.add_argument("--tumor", required=True, type=Path, help="tumour mask drawn on the scan (BraTS: 1/2/3 sub-regions)")
    p.add_argument("--head-mask", type=Path, help="head/brain mask on the scan (default: automatic)")
    p.add_argument("--model", default="demo", help="'demo', an imported model's name, or a checkpoint path")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--margin", type=float, default=5.0, metavar="MM", help="regenerated margin around the tumour")
    p.add_argument("--harmonize", type=int, default=3, metavar="R", help="RePaint resampling rounds (default 3)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    add_sampler_options(p)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run_insert)

    a = commands.add_parser("anonymize", help="a synthetic head with the scan's head outline (no real voxels)",
                            description=__doc__, epilog=ANON_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("scan", type=Path, help="the real scan")
    a.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    a.add_argument("--model", default="demo")
    a.add_argument("--method", choices=METHODS, default="otsu", help="head mask threshold (default otsu)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="auto", choices=DEVICES)
    add_sampler_options(a)
    a.add_argument("--overwrite", action="store_true")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(run=run_anonymize)


def run_insert(args: argparse.Namespace) -> int:
    check_folder_name(args.output)
    model = load_named_model(args.model, device=args.device)
    choice = resolve_sampler(args, model)
    scan_paths = modality_files(args.scan, model.family.modalities)
    stem_ext = [split_image_name(p) for p in scan_paths]
    outputs = [args.output / f"{stem}_with_tumor{ext or '.nii.gz'}" for stem, ext in stem_ext]
    labels_path = args.output / f"{stem_ext[0][0]}_labels.nii.gz"
    check_destinations([*outputs, labels_path, args.output / "insertion.json"], args.overwrite,
                       inputs=[*scan_paths, args.tumor, args.head_mask])
    scans = [read_mask(p, "scan") for p in scan_paths]  # same checks as masks: 3-D, scalar, finite
    head = read_mask(args.head_mask) if args.head_mask else None
    progress, state = _progress_bar(args.quiet, announcer(choice))
    try:
        result = insert_tumour(model, scans, read_mask(args.tumor), head, args.seed, args.margin, args.harmonize,
                               progress=progress, sampler=choice.settings)
    finally:
        if state["bar"] is not None:
            state["bar"].close()
    result.record["sampler"].update(choice.record())
    record = {**result.record, "scans": [str(p) for p in scan_paths], "tumor": str(args.tumor),
              "model": args.model, "outputs": [p.name for p in outputs]}
    with StagedOutput(args.output) as staged:
        for image, path in zip(result.images, outputs):
            staged.write_image(image, path)
        staged.write_image(result.labels, labels_path)
        staged.write_json(record, args.output / "insertion.json")
        files = staged.commit()
    for path in files:
        print(wrote_line(path))
    return 0


def run_anonymize(args: argparse.Namespace) -> int:
    model = load_named_model(args.model, device=args.device)
    choice = resolve_sampler(args, model)
    progress, state = _progress_bar(args.quiet, announcer(choice))
    try:
        result = anonymize(model, args.scan, args.output, args.seed, args.method, args.overwrite, args.model, progress,
                           sampler=choice.settings, sampler_choice=choice.record())
    finally:
        if state["bar"] is not None:
            state["bar"].close()
    for path in result.files:
        print(wrote_line(path))
    return 0
