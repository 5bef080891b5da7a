"""Faults while writing: signals, full disks and two writers (issue 20, deliverable 3).

* SIGINT and SIGTERM at several points of ``generate``, ``dataset`` and ``train``, sent to a real
  subprocess when an event shows the point is reached (a progress line, a staged file, a checkpoint
  appearing; never a fixed sleep): the exit code says cancelled/terminated, no partial or temporary
  file is left, and a re-run (``--resume`` for train) gives the same result as an uninterrupted run.
* A full disk (``ENOSPC`` injected into the writer in-process: SimpleITK's and torch's writers report
  it as the exception raised here) during each writer: one clear line, nothing half-written, earlier
  outputs intact, and a re-run completes.
* Two processes writing the same dataset folder: both finish and the folder equals one run's.

Everything runs the tiny test model on 16^3 grids, so each case takes a few seconds.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cli_helpers import REPO, TINY_CKPT, head_labels, image_from_xyz, interruptible, run_cli, write_mask

# 16^3, a few steps: about a second per sample or case on one CPU thread, long enough for a signal to land
GEN = ["--model", "tiny16", "--sampler", "ddim", "--steps", "5", "--device", "cpu", "--quiet"]
DATA = ["--model", "tiny16", "--sampler", "ddim", "--steps", "3", "--samples-per-mask", "2", "--device", "cpu"]
TRAIN = ["--grid", "16,16,16", "--spacing", "12,12,12", "--mult", "1,1", "--attention", "", "--timesteps", "10",
         "--accum", "1", "--lr", "1e-3", "--quiet", "--device", "cpu", "--save-every", "2"]
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


SIGNALS = [signal.SIGINT, signal.SIGTERM]  # SIGTERM is handled like Ctrl-C and exits 143


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDDDPMSYNTH_HOME", str(home))
        from MedDDPMSynthLib.store.models import import_model

        import_model(TINY_CKPT, name="tiny16", grid_xyz=(16, 16, 16), spacing_mm=(12.0, 12.0, 12.0))
    return home


@pytest.fixture()
def env(home, monkeypatch):
    monkeypatch.setenv("MEDDDPMSYNTH_HOME", str(home))
    return {**os.environ, "OMP_NUM_THREADS": "1", "MEDDDPMSYNTH_HOME": str(home)}


@pytest.fixture(scope="module")
def mask(tmp_path_factory) -> Path:
    return write_mask(tmp_path_factory.mktemp("mask") / "m.nii.gz",
                      head_labels(size=(20, 20, 16), spacing=(8, 8, 8), tumour_radius_mm=20), spacing=(8.0, 8.0, 8.0))


@pytest.fixture(scope="module")
def masks(tmp_path_factory, mask) -> Path:
    folder = tmp_path_factory.mktemp("masks")
    for i, centre in enumerate([(0.55, 0.5, 0.5), (0.45, 0.5, 0.5)]):
        write_mask(folder / f"case{i}.nii.gz", head_labels(size=(20, 20, 16), spacing=(8, 8, 8), tumour_centre=centre,
                                                           tumour_radius_mm=20), spacing=(8.0, 8.0, 8.0))
    return folder


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for n in range(2):
        labels = head_labels(size=(20, 20, 16), spacing=(8, 8, 8), tumour_centre=(0.5 + 0.05 * n, 0.5, 0.5),
                             tumour_radius_mm=20)
        write_mask(root / "masks" / f"c{n}.nii.gz", labels, spacing=(8.0, 8.0, 8.0))
        values = (40.0 * (labels > 0) + 60.0 * (labels == 2) + rng.normal(0, 1, labels.shape)).astype(np.float32)
        sitk.WriteImage(image_from_xyz(values, (8.0,) * 3, (-80.0, -80.0, -60.0)), str(root / "images" / f"c{n}.nii.gz"))
    return root / "masks", root / "images"


def _interrupt(command: list, env: dict, reached, signum, timeout: float = 120) -> tuple[int, str]:
    """Run ``medddpm-synth COMMAND`` and send ``signum`` once ``reached(stderr_so_far)`` is true."""
    process = subprocess.Popen([sys.executable, "-m", "MedDDPMSynthLib", *map(str, command)], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: process.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline, sent = time.monotonic() + timeout, False
    while process.poll() is None and time.monotonic() < deadline:
        if reached("".join(chunks)):
            process.send_signal(signum)
            sent = True
            break
        time.sleep(0.005)
    try:
        process.wait(timeout=60)
    finally:
        process.kill()
    reader.join(timeout=10)
    err = "".join(chunks)
    if not sent and process.returncode == 0:  # a transient point (a staged file) can pass between two polls
        pytest.skip("the run finished before the 5 ms poll caught the point to interrupt; nothing to check")
    assert sent, f"the point to interrupt was never reached (exit {process.returncode}):\n{err[-2000:]}"
    return process.returncode, err


def _leftovers(root: Path) -> list[Path]:
    """Hidden staging folders, temporary and partial files below ``root`` (the dataset lock is meant to stay)."""
    return [p for p in root.rglob("*") if p.name != ".medddpm-dataset.lock"
            and (p.name.startswith(".") or p.name.endswith((".part", ".tmp")) or ".tmp." in p.name)]


def _digest(paths) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths)}


def _staged(root: Path) -> bool:
    """A staging folder with a file in it; the child may remove it while we look (then: not yet / no more)."""
    try:
        return any(root.glob(".medddpm-partial-*/*"))
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------------------------------ generate


@pytest.fixture(scope="module")
def generated(home, mask, tmp_path_factory) -> dict[str, str]:
    """Images of one uninterrupted in-process run: what every interrupted + re-run must equal."""
    out = tmp_path_factory.mktemp("gen") / "clean"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDDDPMSYNTH_HOME", str(home))
        from MedDDPMSynthLib.cli.commands import main

        assert main(["generate", "--mask", str(mask), "-o", str(out), *GEN, "--samples", "2"]) == 0
    return _digest(out.glob("*_t1c.nii.gz"))


@pytest.mark.parametrize("signum", SIGNALS)
@pytest.mark.parametrize("point", ["sampling", "writing"])
def test_generate_interrupted_leaves_nothing_and_reruns_identically(point, signum, env, mask, generated, tmp_path,
                                                                   capsys):
    out = tmp_path / "out"
    command = ["generate", "--mask", mask, "-o", out, *GEN[:-1], "--progress-lines", "--samples", "2"]
    # sampling: the first network step is done; writing: sample 0 is in the staging folder, sample 1 is not
    reached = (lambda err: "PROGRESS 1 " in err) if point == "sampling" else (lambda err: _staged(out))
    code, err = _interrupt(command, env, reached, signum)
    assert code == CODES[signum], err[-2000:]
    assert "Traceback" not in err and re.search(r"(cancelled|terminated): nothing was written", err), err[-2000:]
    assert not out.exists(), f"left behind: {list(out.rglob('*'))}"
    assert not _leftovers(tmp_path)
    assert run_cli(["generate", "--mask", mask, "-o", out, *GEN, "--samples", "2"], capsys)[0] == 0
    assert _digest(out.glob("*_t1c.nii.gz")) == generated


# ------------------------------------------------------------------------------------------- dataset


def _dataset_files(root: Path) -> dict[str, str]:
    """Every file of a dataset folder but the per-process logs (timings) and the lock."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "logs" and p.name != ".medddpm-dataset.lock"}


@pytest.fixture(scope="module")
def dataset_clean(home, masks, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("ds") / "clean"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDDDPMSYNTH_HOME", str(home))
        from MedDDPMSynthLib.cli.commands import main

        assert main(["dataset", "--masks", str(masks), "-o", str(out), *DATA, "--quiet"]) == 0
    return _dataset_files(out)


@pytest.mark.parametrize("signum", SIGNALS)
@pytest.mark.parametrize("point", ["between-cases", "inside-a-case"])
def test_dataset_interrupted_keeps_complete_cases_and_resumes_identically(point, signum, env, masks, dataset_clean,
                                                                         tmp_path, capsys):
    out = tmp_path / "ds"
    command = ["dataset", "--masks", masks, "-o", out, *DATA]
    if point == "between-cases":  # the first case is in the manifest
        reached = lambda err: (out / "manifest.csv").is_file()  # noqa: E731
    else:  # a case's files are being staged
        reached = lambda err: _staged(out)  # noqa: E731
    code, err = _interrupt(command, env, reached, signum)
    assert code == CODES[signum], err[-2000:]
    assert "Traceback" not in err
    # the cancel line starts a line of its own, after the progress bar's
    assert re.search(r"(^|\n)cancelled: only complete cases were kept", err), repr(err[-600:])
    assert not _leftovers(out)
    listed = (out / "manifest.csv").read_text().splitlines()[1:] if (out / "manifest.csv").exists() else []
    cases = sorted(row.split(",")[0] for row in listed)
    assert sorted(p.name[: -len(".nii.gz")] for p in (out / "labelsTr").glob("*")) == cases
    assert sorted(p.name[: -len("_0000.nii.gz")] for p in (out / "imagesTr").glob("*")) == cases
    assert run_cli(["dataset", "--masks", masks, "-o", out, *DATA, "--quiet"], capsys)[0] == 0
    assert _dataset_files(out) == dataset_clean


def test_two_processes_writing_one_dataset_folder_agree(env, masks, dataset_clean, tmp_path):
    """Started together on one folder: both finish (cases are claimed through the manifest lock) and the
    folder equals one uninterrupted run's."""
    out = tmp_path / "ds"
    command = [sys.executable, "-m", "MedDDPMSynthLib", "dataset", "--masks", str(masks), "-o", str(out), *DATA,
               "--quiet"]
    runs = [subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [run.communicate(timeout=300) for run in runs]
    for run, (_, err) in zip(runs, results):
        assert run.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert not _leftovers(out)
    assert _dataset_files(out) == dataset_clean


# --------------------------------------------------------------------------------------------- train


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_weights(a: Path, b: Path) -> bool:
    x, y = _weights(a), _weights(b)
    return x["step"] == y["step"] and all(torch.equal(x["ema"][k], y["ema"][k]) for k in x["ema"]) and \
        all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"])


def _pairs_complete(out: Path) -> None:
    """Every checkpoint has its state sidecar for the same step; nothing temporary is left."""
    for checkpoint in (p for p in out.glob("model-*.pt") if not p.name.endswith(".train-state.pt")):
        sidecar = Path(str(checkpoint) + ".train-state.pt")
        assert sidecar.is_file(), f"{checkpoint.name} has no state"
        assert torch.load(sidecar, weights_only=True)["step"] == _weights(checkpoint)["step"]
    assert not _leftovers(out)


@pytest.fixture(scope="module")
def trained(train_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "clean"
    from MedDDPMSynthLib.cli.commands import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the same bits
    try:
        assert main(["train", "--masks", str(train_data[0]), "--images", str(train_data[1]), "-o", str(out), *TRAIN,
                     "--steps", "6"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out / "model-6.pt"


@pytest.mark.parametrize("signum", SIGNALS)
def test_train_interrupted_resumes_to_the_same_weights(signum, env, train_data, trained, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--masks", train_data[0], "--images", train_data[1], "-o", out, *TRAIN, "--steps", "6"]
    code, err = _interrupt(argv, env, lambda _err: (out / "model-last.pt").is_file(), signum)  # step 2 saved
    assert code == CODES[signum], err[-2000:]
    assert "Traceback" not in err and "continue with --resume" in err, err[-2000:]
    _pairs_complete(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, _, err = run_cli([*argv, "--resume"], capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert _same_weights(out / "model-6.pt", trained)
    _pairs_complete(out)


# ------------------------------------------------------------------------------------------ disk full


def _full_disk_after(monkeypatch, module, name: str, allowed: int, exc=None):
    """Let ``module.name`` (a writer) succeed ``allowed`` times, then fail as a full disk does."""
    real = getattr(module, name)
    calls = []

    def writer(*args, **kwargs):
        calls.append(1)
        if len(calls) > allowed:
            raise exc or OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, writer)
    return calls


def _one_error_line(err: str, *phrases) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert all(p in lines[0] for p in phrases), lines[0]


@pytest.mark.parametrize("allowed", [0, 1])
def test_generate_with_a_full_disk(allowed, env, mask, generated, tmp_path, monkeypatch, capsys):
    """SimpleITK's writer fails at the first or the second sample: nothing of the run is left, earlier files stay."""
    from MedDDPMSynthLib.io import outputs

    earlier = write_mask(tmp_path / "earlier" / "m.nii.gz")
    before = earlier.read_bytes()
    out = tmp_path / "earlier" / "out"
    _full_disk_after(monkeypatch, outputs.sitk, "WriteImage", allowed,
                     RuntimeError("ITK ERROR: NiftiImageIO: Could not write file: No space left on device"))
    code, _, err = run_cli(["generate", "--mask", mask, "-o", out, *GEN, "--samples", "2"], capsys)
    assert code == 2
    _one_error_line(err, "could not write", "the disk is full; free disk space")
    assert not out.exists() and not _leftovers(tmp_path) and earlier.read_bytes() == before
    monkeypatch.undo()
    monkeypatch.setenv("MEDDDPMSYNTH_HOME", env["MEDDDPMSYNTH_HOME"])
    assert run_cli(["generate", "--mask", mask, "-o", out, *GEN, "--samples", "2"], capsys)[0] == 0
    assert _digest(out.glob("*_t1c.nii.gz")) == generated


def test_tumor_edit_with_a_full_disk(mask, tmp_path, monkeypatch, capsys):
    from MedDDPMSynthLib.io import outputs

    _full_disk_after(monkeypatch, outputs.Path, "write_text", 0)  # the edit record (JSON) after the mask
    out = tmp_path / "moved.nii.gz"
    code, _, err = run_cli(["tumor", "shift", "--mask", mask, "--vector", "8,0,0", "-o", out], capsys)
    assert code == 2
    _one_error_line(err, "could not write moved.json", "the disk is full")
    assert list(tmp_path.iterdir()) == []


def test_dataset_with_a_full_disk_keeps_earlier_cases(env, masks, dataset_clean, tmp_path, monkeypatch, capsys):
    """The disk fills up at the fourth case: three complete cases stay listed, a re-run completes the set."""
    from MedDDPMSynthLib.io import outputs

    _full_disk_after(monkeypatch, outputs.sitk, "WriteImage", 3 * 2,  # image + label map per case
                     RuntimeError("ITK ERROR: Could not write file: No space left on device"))
    out = tmp_path / "ds"
    code, _, err = run_cli(["dataset", "--masks", masks, "-o", out, *DATA, "--quiet"], capsys)
    assert code == 2
    _one_error_line(err, "the disk is full")
    assert len((out / "manifest.csv").read_text().splitlines()) == 1 + 3
    assert len(list((out / "labelsTr").iterdir())) == 3 and not _leftovers(out)
    monkeypatch.undo()
    monkeypatch.setenv("MEDDDPMSYNTH_HOME", env["MEDDDPMSYNTH_HOME"])
    assert run_cli(["dataset", "--masks", masks, "-o", out, *DATA, "--quiet"], capsys)[0] == 0
    assert _dataset_files(out) == dataset_clean


@pytest.mark.parametrize("writer", ["state", "checkpoint"])
def test_train_with_a_full_disk_never_leaves_a_checkpoint_without_its_state(writer, train_data, trained, tmp_path,
                                                                            monkeypatch, capsys):
    """torch.save fails (as on a full disk: RuntimeError) for step 4's sidecar or checkpoint: one line, the
    step-2 pair intact, no step-4 file alone; --resume then reaches the uninterrupted run's weights."""
    # torch.save calls per milestone: the state sidecar first, then the checkpoint; step 2 is calls 1-2
    _full_disk_after(monkeypatch, torch, "save", 2 if writer == "state" else 3,
                     RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: "
                                  "No space left on device"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path / "run"
    argv = ["train", "--masks", train_data[0], "--images", train_data[1], "-o", out, *TRAIN, "--steps", "6"]
    try:
        code, _, err = run_cli(argv, capsys)
        assert code == 2
        _one_error_line(err, "cannot write", "the disk is full")
        _pairs_complete(out)
        assert _weights(out / "model-last.pt")["step"] == 2 and not (out / "model-4.pt").exists()
        monkeypatch.undo()
        code, _, err = run_cli([*argv, "--resume"], capsys)
        assert code == 0, err
    finally:
        torch.set_num_threads(threads)
    assert _same_weights(out / "model-6.pt", trained)
