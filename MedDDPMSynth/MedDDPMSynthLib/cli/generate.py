"""``medddpm-synth generate``: argument parsing and progress display around :mod:`.pipeline`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from MedDDPMSynthLib.progress_bar import progress_bar
from MedDDPMSynthLib.cli.numbers import number_list
from MedDDPMSynthLib.devices import DEVICES
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.store.models import load_named_model
from MedDDPMSynthLib.workflows.pipeline import GEOMETRIES, INTENSITIES, GenerateRequest, generate_files
from MedDDPMSynthLib.cli.sampler_options import SAMPLER_HELP, add_sampler_options, announcer, resolve_sampler
from MedDDPMSynthLib.protocol import progress_line, warning_line, wrote_line

EPILOG = f"""examples:
  # the bundled demo model on the bundled example mask (CPU: the preview sampler, seconds)
  medddpm-synth generate --mask MedDDPMSynth/Resources/Examples/demo_mask.nii.gz --model demo -o out/
  # the same with the official sampler (all 250 steps; the default on a GPU)
  medddpm-synth generate --mask MedDDPMSynth/Resources/Examples/demo_mask.nii.gz --model demo -o out/ --sampler exact
  # an imported official whole-head model, 4 samples, reproducible
  medddpm-synth generate --mask head_mask.nrrd --model wholehead -o out/ --samples 4 --seed 7
  # a BraTS segmentation (raw BraTS 0/1/2/4 labels need a brain label: --labels ...)
  medddpm-synth generate --mask BraTS_seg.nii.gz --model model_brats.pt -o out/
  # one file; mask values 5 (head) and 9 (tumour)
  medddpm-synth generate --mask m.nii.gz --model demo -o synth.nii.gz --labels head=5,tumor=9
  # exactly what the official sample.py writes for this seed (mask already on the model grid)
  medddpm-synth generate --mask m128.nii.gz --model wholehead -o o.nii.gz --seed 3 --device cpu \\
      --sampler ddpm --geometry official --intensity raw --grid 128,128,128

{SAMPLER_HELP}

output: -o ending in .nii.gz/.nii/.nrrd/.mha writes one file (BraTS: NAME_t1, _t1ce, _t2, _flair);
otherwise a folder with one file per sample and modality, the mask, provenance.json and preview.png.
exit codes: 0 ok, 1 runtime failure, 2 bad input or usage, 130 cancelled (Ctrl-C; nothing is written), 143 terminated (SIGTERM; nothing is written).
"""


def _grid(text: str) -> tuple[int, int, int]:
    values = number_list(text, int)
    if values is None or len(values) != 3:
        raise argparse.ArgumentTypeError(f"'{text}' is not X,Y,Z (three integers)")
    return values


def add_parser(commands) -> None:
    p = commands.add_parser(
        "generate",
        help="generate synthetic MRI from a mask file",
        description="Generate synthetic MRI for a label mask (NIfTI, NRRD or MetaImage, any orientation).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mask", required=True, type=Path, help="label map: 0 background, 1 head, 2 tumour (whole-head) "
                   "or 1 necrotic, 2 oedema, 3 enhancing, 4 brain (BraTS); see --labels")
    p.add_argument("--model", default="demo", help="'demo' (bundled), an imported model's name, or a checkpoint path")
    p.add_argument("-o", "--output", required=True, type=Path, help="output image file or folder")
    p.add_argument("--samples", type=int, default=1, help="number of different samples (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sample n uses seed SEED+n (default 0)")
    p.add_argument("--batch", type=int, default=1, help="samples per network pass (memory vs speed; default 1)")
    add_sampler_options(p)
    p.add_argument("--device", default="auto", choices=DEVICES, help="default: auto")
    p.add_argument("--grid", type=_grid, metavar="X,Y,Z", help="model grid in voxels (default: the model's own)")
    p.add_argument("--labels", metavar="NAME=V,...", help="which mask values are which tissue, e.g. head=1,tumor=2+3")
    p.add_argument("--geometry", choices=GEOMETRIES, default="physical",
                   help="physical (default): resample to the model grid around the head and back onto the mask's grid; "
                        "official: resize like the official script and write with the mask's affine")
    p.add_argument("--intensity", choices=INTENSITIES, default="raw", help="raw: model output in [-1, 1]; unit: [0, 1]")
    p.add_argument("--keep", type=Path, metavar="PREVIOUS_IMAGE",
                   help="local re-generation: keep this earlier result outside the edited tumour's neighbourhood")
    p.add_argument("--previous-mask", type=Path, help="the mask PREVIOUS_IMAGE was made from (default: from its provenance.json)")
    p.add_argument("--margin", type=float, default=10.0, metavar="MM", help="regenerated margin around old and new tumour (default 10 mm)")
    p.add_argument("--harmonize", type=int, default=3, metavar="R",
                   help="RePaint resampling rounds that blend the region into the kept image (default 3; 1 = none)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--progress-lines", action="store_true",
                   help="machine-readable progress for front ends: one 'PROGRESS DONE TOTAL' line per step on "
                        "stderr (flushed), instead of the progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.samples < 1 or args.batch < 1:
        raise InputError("--samples and --batch must be at least 1; use e.g. --samples 1 --batch 1")
    model = load_named_model(args.model, device=args.device)
    choice = resolve_sampler(args, model)
    announce = announcer(choice)
    request = GenerateRequest(
        mask=args.mask, output=args.output, samples=args.samples, seed=args.seed, batch=args.batch,
        geometry=args.geometry, grid_xyz=args.grid, intensity=args.intensity, labels=args.labels,
        overwrite=args.overwrite,
        sampler=choice.settings, sampler_choice=choice.record(),
        keep=args.keep, previous_mask=args.previous_mask, margin_mm=args.margin, harmonize=args.harmonize,
    )
    request.sampler.check(model.timesteps)
    # the bar opens at the first step, so refusals (checked before sampling) print only their error line
    bar = None

    def progress(done: int, steps_total: int) -> None:
        nonlocal bar
        announce()
        if args.progress_lines:
            print(progress_line(done, steps_total), file=sys.stderr, flush=True)
            return
        if bar is None:
            bar = progress_bar(total=steps_total, unit="step", desc="generating", file=sys.stderr, disable=args.quiet,
                       dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        result = generate_files(request, model, model_name=args.model, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    for warning in result.warnings:
        print(warning_line(warning), file=sys.stderr)
    steps = result.provenance["sampler"]["steps"]
    print(f"{model.family.title}; {request.sampler.name}, {steps} steps, {request.sampler.precision}, {model.device}")
    for path in result.files:
        print(wrote_line(path))
    return 0
