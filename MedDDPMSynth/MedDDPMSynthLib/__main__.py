"""``python -m MedDDPMSynthLib`` = the ``medddpm-synth`` command."""

from .cli import main

raise SystemExit(main())
