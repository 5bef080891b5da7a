"""``python -m MedDDPMSynthLib`` = the ``medddpm-synth`` command."""

from MedDDPMSynthLib.cli.commands import main

raise SystemExit(main())
