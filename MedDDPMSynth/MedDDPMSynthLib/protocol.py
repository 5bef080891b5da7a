"""The line protocol between the engine's command line and the fronts that run it as a process.

``medddpm-synth generate --progress-lines`` prints one ``PROGRESS DONE TOTAL`` line per sampling step and
``warning: TEXT`` lines on stderr, ``wrote PATH`` per written file on stdout, and every command ends a
failure with one ``error: TEXT`` line on stderr. The Slicer module's process runner
(:mod:`MedDDPMSynthSlicerLib.process`) reads the same lines back with :func:`parse_line`: both sides use
this module, so the format lives in one place.
"""

from __future__ import annotations

import os

PROGRESS, ERROR, WARNING, WROTE, LOG = "progress", "error", "warning", "wrote", "log"


def progress_line(done: int, total: int) -> str:
    return f"PROGRESS {int(done)} {int(total)}"


def error_line(message: object) -> str:
    return f"{ERROR}: {message}"


def warning_line(message: object) -> str:
    return f"{WARNING}: {message}"


def wrote_line(path: str | os.PathLike) -> str:
    return f"{WROTE} {path}"


def parse_line(line: str) -> tuple[str, object]:
    """('progress', (done, total)) | ('error', text) | ('warning', text) | ('wrote', path) | ('log', line)."""
    text = line.rstrip("\r\n")
    if text.startswith("PROGRESS "):
        parts = text.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            return PROGRESS, (int(parts[1]), int(parts[2]))
    for kind in (ERROR, WARNING):
        if text.startswith(f"{kind}: "):
            return kind, text[len(kind) + 2:]
    if text.startswith(f"{WROTE} "):
        return WROTE, text[len(WROTE) + 1:]
    return LOG, text
