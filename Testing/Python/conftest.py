"""Shared test fixtures: paths to the official parity data and the loaded tiny official model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
OFFICIAL = REPO / "Testing" / "Data" / "official"  # copied from shared/fixtures/official (see its README)

# "demo" means the tiny random official-format model throughout the suite (T = 10: seconds per run), in
# subprocesses too; test_demo_model.py checks the bundled, trained demo model itself.
os.environ["MEDDDPMSYNTH_DEMO_MODEL"] = str(OFFICIAL / "tiny_wholehead_ckpt.pt")


@pytest.fixture(scope="session")
def official_dir() -> Path:
    return OFFICIAL


@pytest.fixture(scope="session")
def tiny_ckpt() -> Path:
    return OFFICIAL / "tiny_wholehead_ckpt.pt"


@pytest.fixture(scope="session")
def tiny_io() -> dict[str, np.ndarray]:
    with np.load(OFFICIAL / "wholehead_tiny_io.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def brats_io() -> dict[str, np.ndarray]:
    with np.load(OFFICIAL / "brats_layout.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def tiny_raw_checkpoint(tiny_ckpt) -> dict:
    return torch.load(tiny_ckpt, map_location="cpu", weights_only=True)


@pytest.fixture()
def tiny_model(tiny_ckpt):
    from MedDDPMSynthLib import load_model

    return load_model(tiny_ckpt, device="cpu")
