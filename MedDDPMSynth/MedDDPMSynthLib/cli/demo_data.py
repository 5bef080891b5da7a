"""``medddpm-synth demo-data``: (mask, image) training pairs from the MNI152 template (see :mod:`.demo_data`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from MedDDPMSynthLib.progress_bar import progress_bar
from MedDDPMSynthLib.cli.numbers import float_list, int_list
from MedDDPMSynthLib.data.demo_data import build_dataset

EPILOG = """examples:
  # the bundled demo model's training data: 500 cases of 48x64x48 voxels at 3.5 mm
  medddpm-synth demo-data -o demo_data/ --cases 500 --grid 48,64,48 --spacing 3.5,3.5,3.5 --seed 2026
  medddpm-synth train --masks demo_data/masks --images demo_data/images -o run/ --grid 48,64,48 --spacing 3.5,3.5,3.5

Writes OUT/masks (0 background, 1 brain, 2 tumour), OUT/images (T1 in [0, 1]), OUT/substructures (BraTS-style
1 necrotic, 2 oedema, 3 enhancing, 4 brain) and OUT/dataset.json. Re-running completes an interrupted build;
case i depends only on (seed, i). Needs the nilearn wheel (pip install nilearn==0.14.1) for the template files.
"""


def add_parser(commands) -> None:
    p = commands.add_parser(
        "demo-data", help="build demo training pairs from the MNI152 template with synthetic tumours",
        description="Build (mask, T1 image) pairs from the MNI152 2009 template with random augmentation and "
                    "synthetic tumours: the data the bundled demo model was trained on.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (resumable)")
    p.add_argument("--cases", type=int, default=500, help="number of pairs (default 500)")
    p.add_argument("--grid", type=int_list, default=(48, 64, 48), metavar="X,Y,Z", help="voxels (default 48,64,48)")
    p.add_argument("--spacing", type=float_list, default=(3.5, 3.5, 3.5), metavar="A,B,C", help="mm (default 3.5,3.5,3.5)")
    p.add_argument("--seed", type=int, default=2026, help="seed of the whole dataset (default 2026)")
    p.add_argument("--template-dir", type=Path, help="folder of the MNI152 files (default: nilearn's data folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    bar = progress_bar(total=args.cases, unit="case", desc="demo data", file=sys.stderr, disable=args.quiet)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        written = build_dataset(args.output, args.cases, args.seed, args.grid, args.spacing,
                                template_dir=args.template_dir, progress=progress)
    finally:
        bar.close()
    print(f"{len(written)} new case(s); {args.cases} in {args.output}")
    return 0
