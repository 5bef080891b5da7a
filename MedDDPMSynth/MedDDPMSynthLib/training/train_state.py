"""A training checkpoint's sidecar ``<checkpoint>.train-state.pt``: what the official ``{step, model, ema}``
checkpoint lacks to continue a run exactly (optimiser, scaler, RNG states, data position, config). Read
with ``weights_only=True``; written and replaced beside its checkpoint as one pair, never half of it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from MedDDPMSynthLib.errors import CheckpointError, OutputError
from MedDDPMSynthLib.io.outputs import new_temp_file
from MedDDPMSynthLib.io.write_errors import short_reason, write_advice

SIDECAR_SUFFIX = ".train-state.pt"


def numpy_state() -> tuple:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def set_numpy_state(state) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def sidecar_path(checkpoint) -> Path:
    return Path(str(checkpoint) + SIDECAR_SUFFIX)


def read_train_state(checkpoint) -> dict | None:
    """The sidecar of ``checkpoint`` (None if there is none); tensors and plain values only."""
    path = sidecar_path(checkpoint)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable in any way: the same advice
        raise CheckpointError(f"{path} is unreadable ({type(error).__name__}); resume from an earlier checkpoint") from None


def replace_pair(source: Path, target: Path) -> None:
    """Copy checkpoint ``source`` and its sidecar over ``target`` and its sidecar: both copies are
    complete (the disk may fill up during either) before either is renamed into place, so the pair
    at ``target`` is the old one or the new one, never a mix."""
    copies = []
    try:
        for src, dst in ((sidecar_path(source), sidecar_path(target)), (source, target)):
            tmp = new_temp_file(dst.parent, f".{dst.name}")
            copies.append((tmp, dst))
            shutil.copyfile(src, tmp)
        for tmp, dst in copies:
            os.replace(tmp, dst)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {short_reason(exc)}; {write_advice(exc)}") from None
    finally:
        for tmp, _ in copies:
            tmp.unlink(missing_ok=True)
