"""``medddpm-synth evaluate``: metrics of generated images against references, a JSON report and a montage."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from MedDDPMSynthLib.protocol import wrote_line
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.families import FAMILIES
from MedDDPMSynthLib.io.outputs import StagedOutput, check_destinations

EPILOG = """examples:
  # samples generated for a folder of masks, against the real images of those masks
  medddpm-synth evaluate --generated out/ --reference images/ --masks masks/ -o report.json --montage report.png
  # diversity and tumour contrast only (no references)
  medddpm-synth evaluate --generated out/ --masks masks/

matching: generated case_0007_s00_t1c.nii.gz belongs to reference (or mask) case_0007.nii.gz: its name is
the case's name or starts with it followed by '_', '-' or '.' (longest match wins; *_mask files are skipped).
Every volume is min-max scaled to [0, 1] first. PSNR of identical images is infinite (null in the JSON).
"""

TABLE = (
    ("ms_ssim_vs_reference", "MS-SSIM vs reference (1 = identical)"),
    ("psnr", "PSNR in mask, dB"),
    ("mse", "MSE in mask"),
    ("mae", "MAE in mask"),
    ("diversity_ms_ssim", "diversity: MS-SSIM between samples (lower = more diverse)"),
    ("mmd", "MMD generated vs reference (0 = same mean image)"),
    ("contrast_generated", "tumour - surrounding tissue, generated"),
    ("contrast_reference", "tumour - surrounding tissue, reference"),
    ("cohens_d_generated", "Cohen's d of that contrast, generated"),
    ("cohens_d_reference", "Cohen's d of that contrast, reference"),
)


def add_parser(commands) -> None:
    p = commands.add_parser(
        "evaluate",
        help="compare a folder of generated images with reference images and masks",
        description="MS-SSIM, PSNR/MSE/MAE inside the masks, diversity, MMD and tumour contrast of generated images.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--generated", required=True, type=Path, help="folder of generated images")
    p.add_argument("--reference", type=Path, help="folder of reference (real) images, one per case")
    p.add_argument("--masks", type=Path, help="folder of label masks, one per case")
    p.add_argument("-o", "--output", type=Path, help="write the full report as JSON here")
    p.add_argument("--montage", type=Path, help="write a PNG montage here (a row per case: reference, samples)")
    p.add_argument("--family", choices=tuple(FAMILIES), default="whole_head",
                   help="label convention of the masks: whole_head (1 head, 2 tumour; default) or brats "
                        "(1-3 tumour, 4 brain)")
    p.add_argument("--shell-mm", type=float, default=5.0, help="width of the tissue shell around the tumour (mm)")
    p.add_argument("--overwrite", action="store_true", help="replace existing report / montage files")
    p.set_defaults(run=run)


def _tissue_and_tumour(family_name: str) -> tuple[int, tuple[int, ...]]:
    family = FAMILIES[family_name]
    return family.tissue_label, family.tumour_labels


def _json_safe(value):
    """inf / nan -> None, so the report is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _print_table(report: dict) -> None:
    counts = report["counts"]
    print(f"{counts['cases']} cases, {counts['generated']} generated images")
    if counts["unmatched_generated"]:
        print(f"warning: {len(counts['unmatched_generated'])} generated files match no case, e.g. "
              f"{counts['unmatched_generated'][0]}", file=sys.stderr)
    for key, title in TABLE:
        value = report["summary"].get(key)
        if value is not None:
            print(f"  {title:<60} {value:10.4f}")


def run(args: argparse.Namespace) -> int:
    from MedDDPMSynthLib.training import evaluation  # imports MONAI lazily only when evaluating

    if args.shell_mm <= 0:
        raise InputError("--shell-mm must be positive")
    outputs = [p for p in (args.output, args.montage) if p is not None]
    if args.montage is not None and args.montage.suffix.lower() != ".png":
        raise InputError(f"--montage {args.montage} must end in .png")
    check_destinations(outputs, args.overwrite)
    tissue, tumour = _tissue_and_tumour(args.family)
    cases, _ = evaluation.find_cases(args.generated, args.reference, args.masks)
    report = evaluation.evaluate_folders(args.generated, args.reference, args.masks, tumour_labels=tumour,
                                         tissue_label=tissue, shell_mm=args.shell_mm)
    montage = evaluation.montage_png(cases, tumour) if args.montage is not None else None
    _print_table(report)
    if outputs:
        with StagedOutput(outputs[0].resolve().parent) as staged:
            if args.output is not None:
                staged.write_json(_json_safe(report), args.output)
            if montage is not None:
                staged.write_image(montage, args.montage)
            for path in staged.commit():
                print(wrote_line(path))
    return 0
