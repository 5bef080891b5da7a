"""The ``medddpm-synth`` command: sub-commands, one clear error line, documented exit codes.

Exit codes: 0 ok, 1 runtime failure, 2 bad input or usage, 130 cancelled (Ctrl-C), 143 terminated
(SIGTERM, e.g. ``kill`` or a job scheduler's time limit). SIGTERM is handled like Ctrl-C: the same clean-up
runs, so a cancelled or terminated command leaves no partial files or new empty folders.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

from importlib.metadata import entry_points

from MedDDPMSynthLib import __version__
from MedDDPMSynthLib.cli import dataset as cli_dataset
from MedDDPMSynthLib.cli import demo_data as cli_demo_data
from MedDDPMSynthLib.cli import evaluate as cli_evaluate
from MedDDPMSynthLib.cli import generate as cli_generate
from MedDDPMSynthLib.cli import insert as cli_insert
from MedDDPMSynthLib.cli import models as cli_models
from MedDDPMSynthLib.cli import train as cli_train
from MedDDPMSynthLib.cli import tumor as cli_tumor
from MedDDPMSynthLib.cli.numbers import guard_numbers
from MedDDPMSynthLib.errors import MedDDPMError, Terminated
from MedDDPMSynthLib.protocol import error_line

EPILOG = """examples:
  medddpm-synth generate --mask MedDDPMSynth/Resources/Examples/demo_mask.nii.gz --model demo -o out/
  medddpm-synth generate --mask BraTS_seg.nii.gz --model model_brats -o out/ --samples 4 --seed 1
  medddpm-synth models import ~/Downloads/model_128.pt --name wholehead
  medddpm-synth models list
  medddpm-synth tumor shift --mask m.nii.gz --vector 10,0,-5 -o shifted.nii.gz
  medddpm-synth demo-data -o demo_data/ --cases 500
  medddpm-synth train --masks masks/ --images images/ -o run1/ --steps 20000
  medddpm-synth evaluate --generated out/ --reference images/ --masks masks/ -o report.json --montage report.png
  medddpm-synth dataset --masks masks/ --model wholehead -o Dataset501_Synth --samples-per-mask 2
  medddpm-synth serve --port 8080
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medddpm-synth",
        description="Synthetic 3-D brain MRI from label masks with the Med-DDPM diffusion model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cli_generate.add_parser(commands)
    cli_models.add_parser(commands)
    cli_tumor.add_parser(commands)
    cli_insert.add_parser(commands)
    cli_demo_data.add_parser(commands)
    cli_train.add_parser(commands)
    cli_evaluate.add_parser(commands)
    cli_dataset.add_parser(commands)
    _add_front_commands(commands)
    return guard_numbers(parser)


#: entry-point group of the sub-commands that fronts add (pyproject.toml: ``serve`` from MedDDPMSynthWeb)
COMMANDS_GROUP = "medddpm_synth.commands"


def _add_front_commands(commands) -> None:
    """The sub-commands of installed fronts; a front that is listed but not importable (the Slicer
    extension ships the engine alone) adds nothing."""
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            add_parser = entry.load()
        except ImportError:
            continue
        add_parser(commands)


def _raise_terminated(_signum, _frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_cancel():
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (e.g. called from a worker): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 through argparse
    with _sigterm_as_cancel():
        try:
            return args.run(args)
        except MedDDPMError as error:
            print(error_line(error), file=sys.stderr)
            return error.exit_code
        except Terminated:
            print("terminated: nothing was written", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print("cancelled: nothing was written", file=sys.stderr)
            return 130
