"""The ``medddpm-synth`` command line: one module per sub-command."""

from .commands import main  # noqa: F401  (the console script: medddpm-synth = MedDDPMSynthLib.cli:main)
