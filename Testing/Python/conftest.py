"""Shared test fixtures: paths to the official parity data and the loaded tiny official model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
OFFICIAL = REPO / "Testing" / "Data" / "official"  # copied from shared/fixtures/official (see its README)

TINY_DEMO = OFFICIAL / "tiny_wholehead_ckpt.pt"
DEMO_ENV = "MEDDDPMSYNTH_DEMO_MODEL"
# "demo" is the bundled model unless a test module asks for the tiny one (fixture tiny_demo): a value left in
# the caller's shell must not decide which model the suite tests
os.environ.pop(DEMO_ENV, None)


#: the tiny model has no trained grid; 32^3 voxels of 6 mm cover a head's 192 mm and run in seconds
TINY_DEMO_GRID, TINY_DEMO_SPACING = (32, 32, 32), (6.0, 6.0, 6.0)


@pytest.fixture(scope="session")
def tiny_demo_file(tmp_path_factory) -> Path:
    """The tiny model as a demo-model file: exported (fp32, same weights) with its test grid inside, the way
    the bundled demo model carries its grid, so the product needs no test-only case."""
    from MedDDPMSynthLib.store.models import export_model

    path = tmp_path_factory.mktemp("tiny_demo") / "tiny_random_test_model.safetensors"
    export_model(TINY_DEMO, path, dtype="fp32", grid_xyz=TINY_DEMO_GRID, spacing_mm=TINY_DEMO_SPACING)
    return path


@pytest.fixture(scope="module")
def tiny_demo(tiny_demo_file):
    """"demo" means the tiny random official-format model (T = 10: seconds per run) for one test module, in
    its subprocesses too. Modules opt in with ``pytestmark = pytest.mark.usefixtures("tiny_demo")``;
    everywhere else "demo" is the bundled model as users get it (test_demo_model.py, test_resources.py,
    test_extension_install.py), so a missing or misplaced bundled model fails the suite."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DEMO_ENV, str(tiny_demo_file))
        yield tiny_demo_file


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    """A model catalogue holding the tiny model as 'tiny16' (16^3 at 12 mm: a sample takes a fraction of a
    second); tests set MEDDDPMSYNTH_HOME to it."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDDDPMSYNTH_HOME", str(home))
        from MedDDPMSynthLib.store.models import import_model

        import_model(OFFICIAL / "tiny_wholehead_ckpt.pt", name="tiny16", grid_xyz=(16, 16, 16),
                     spacing_mm=(12.0, 12.0, 12.0))
    return home


@pytest.fixture(scope="module")
def model_home(tmp_path_factory):
    """A private model catalogue holding the tiny official-format model on a 16^3 grid of 12 mm."""
    home = tmp_path_factory.mktemp("home")
    # one thread per engine process: a tiny model gains nothing from more, and on a busy 2-core machine
    # OpenMP threads fighting for the cores make each step several times slower
    saved = {k: os.environ.get(k) for k in ("MEDDDPMSYNTH_HOME", "OMP_NUM_THREADS")}
    os.environ.update(MEDDDPMSYNTH_HOME=str(home), OMP_NUM_THREADS="1")
    from MedDDPMSynthLib.store.models import import_model

    import_model(OFFICIAL / "tiny_wholehead_ckpt.pt", name="tiny16", grid_xyz=(16, 16, 16),
                 spacing_mm=(12.0, 12.0, 12.0))
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
