"""User-facing errors of the engine.

Every problem a user can cause (bad mask, foreign checkpoint, existing output, ...) is raised as a
subclass of ``MedDDPMError`` whose message names the problem *and* the fix in one sentence. Fronts
(command line, Slicer widget, browser) show ``str(error)`` as is and never a traceback.
"""


class MedDDPMError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` is what the command line returns."""

    exit_code = 2


class InputError(MedDDPMError):
    """Bad mask, image or argument (wrong labels, empty mask, wrong dimensionality, NaN, ...)."""


class CheckpointError(MedDDPMError):
    """A model file that cannot be used: missing, corrupt, foreign, unsafe or mismatched."""


class OutputError(MedDDPMError):
    """An output that cannot be written: exists already, unwritable folder, no disk space."""


class RuntimeFailure(MedDDPMError):
    """The run itself failed (out of memory, device error); the input was fine."""

    exit_code = 1


class GenerationCancelled(MedDDPMError):
    """The user cancelled; nothing partial is left behind."""

    exit_code = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit), raised by the command line's handler wherever the
    program is, like Ctrl-C's KeyboardInterrupt: every clean-up that handles a cancel handles it too."""
