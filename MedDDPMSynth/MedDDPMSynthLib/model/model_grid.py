"""Which grid a model file was trained on: the one resolution order used by loading, the catalogue and export.

A Med-DDPM checkpoint holds no grid, so the training grid (voxels X, Y, Z and spacing in mm) is taken from,
in this order: an explicit value (``--grid``/``--spacing`` or a catalogue entry), the file's own
safetensors metadata (``models export`` writes it), the training run's ``config.json`` beside the file
(``medddpm-synth train`` writes it), a known official release, and last the family's official grid.
"""

from __future__ import annotations

import math
from pathlib import Path

from MedDDPMSynthLib.model.checkpoint import CheckpointInfo
from MedDDPMSynthLib.training.run_config import run_config_beside
from MedDDPMSynthLib.errors import CheckpointError
from MedDDPMSynthLib.domain.families import Family


def metadata_triple(metadata: dict[str, str], key: str, cast, path) -> tuple | None:
    """A grid or spacing triple from safetensors metadata: three positive finite numbers, or a
    CheckpointError (a zero spacing would divide by zero later, a malformed one raise ValueError)."""
    value = metadata.get(key)
    if not value:
        return None
    try:
        values = tuple(cast(v) for v in value.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise CheckpointError(
            f"{path} has invalid '{key}' metadata ({value[:40]!r}): it must be three positive numbers; fix the "
            "file with 'medddpm-synth models export --grid X,Y,Z --spacing A,B,C' or give --grid"
        )
    return values


def training_grid(path: str | Path, info: CheckpointInfo, family: Family | None, grid_xyz=None, spacing_mm=None,
                  known: dict | None = None) -> tuple[object, object, bool]:
    """(grid, spacing, from_the_file): the model file's training grid in the one order above. ``family``
    None: no family default (the grid stays None when nothing says it). ``from_the_file``: the grid came
    from an explicit value, the file or its run, not from a default."""
    known = known or {}
    run = run_config_beside(path)
    file_grid = metadata_triple(info.metadata, "grid_xyz", int, path) or run.get("grid_xyz")
    file_spacing = metadata_triple(info.metadata, "spacing_mm", float, path) or run.get("spacing_mm")
    grid = grid_xyz or file_grid or known.get("grid_xyz") or (family.grid_xyz if family else None)
    spacing = spacing_mm or file_spacing or known.get("spacing_mm") or (family.spacing_mm if family else None)
    return grid, spacing, bool(grid_xyz is not None or file_grid)  # explicit values as given: callers check them
