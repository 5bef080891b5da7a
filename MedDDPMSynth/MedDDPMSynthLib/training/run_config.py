"""A training run's ``config.json``: written beside its checkpoints by ``medddpm-synth train``, read back to
know the grid a run's checkpoint was trained on (:mod:`model_grid`). Writer and reader of the one format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from MedDDPMSynthLib.io.outputs import atomic_write

CONFIG_NAME = "config.json"


def write_run_config(folder: Path, config: dict, **run) -> None:
    """``folder/config.json``: the training config (``TrainConfig.to_dict()``) and facts of the run."""
    text = json.dumps({"config": config, **run}, indent=2)
    atomic_write(Path(folder) / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))


def run_config_beside(checkpoint: str | os.PathLike) -> dict:
    """The training config that 'medddpm-synth train' writes as ``config.json`` beside its checkpoints, or {}.

    Lets a run's ``model-last.pt`` be used directly (its grid and spacing are not inside the file)."""
    try:
        config = json.loads((Path(checkpoint).parent / CONFIG_NAME).read_text()).get("config", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return config if isinstance(config, dict) else {}
