"""Issue 20's fixes that are behaviour rather than a refusal: work bounded in memory, Cancel inside a
network pass, the grid a checkpoint without one runs on, the cheap sha256 check of stored models,
advice that fits why a write failed, a read-only dataset folder. The refusal table is
``test_hostile_inputs.py``."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from cli_helpers import TINY_CKPT, head_labels, message_lines, run_cli, write_mask




def test_samples_are_written_as_they_come_not_kept_until_the_end(tiny_home, tmp_path, monkeypatch):
    """--samples N holds one --batch block in memory: block k's files are staged before block k+1 is sampled."""
    from MedDDPMSynthLib.store.models import load_named_model
    from MedDDPMSynthLib.workflows.pipeline import GenerateRequest, generate_files
    from MedDDPMSynthLib.model.sampling import SamplerSettings

    monkeypatch.setenv("MEDDDPMSYNTH_HOME", str(tiny_home))
    model = load_named_model("tiny16", device="cpu")
    out = tmp_path / "out"
    staged_when = []

    def progress(done, total):
        staged_when.append((done, len([p for p in out.glob(".medddpm-partial-*/*") if "_s0" in p.name])))

    request = GenerateRequest(mask=write_mask(tmp_path / "m.nii.gz"), output=out, samples=3, batch=1,
                              sampler=SamplerSettings("ddim", 2))
    generate_files(request, model, progress=progress)
    # steps 1-2 sample 0, 3-4 sample 1, 5-6 sample 2: staged image files seen at each step
    assert [s for _, s in staged_when] == [0, 0, 1, 1, 2, 2]
    assert len(list(out.glob("m_s0*_t1c.nii.gz"))) == 3


def test_cancel_is_checked_inside_one_network_pass(tiny_model):
    """A front's Cancel stops the run between U-Net blocks, not only after a whole (minutes-long) step."""
    from MedDDPMSynthLib.errors import GenerationCancelled

    calls, steps = [], []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(GenerationCancelled):
        tiny_model.generate(np.pad(head_labels((16, 16, 16)), 0), seed=0, progress=lambda d, t: steps.append(d),
                            cancel=cancel)
    assert steps == [], "the first step ran to its end before the cancel was seen"


def test_a_checkpoint_without_a_grid_says_which_grid_it_uses(tmp_path):
    """A checkpoint given by path with no grid inside runs the family's official grid: said, with the fix."""
    from MedDDPMSynthLib import load_model
    from MedDDPMSynthLib.workflows.pipeline import GenerateRequest, prepare_labels

    request = GenerateRequest(mask=write_mask(tmp_path / "m.nii.gz"), output=tmp_path / "out")
    warnings = prepare_labels(request, load_model(TINY_CKPT))[3]
    assert any("does not say which grid it was trained on" in w and "128x128x128" in w and "--grid" in w
               and "models import PATH --grid" in w for w in warnings), warnings
    assert not any("grid it was trained on" in w for w in prepare_labels(
        request, load_model(TINY_CKPT, grid_xyz=(32, 32, 32), spacing_mm=(6.0, 6.0, 6.0)))[3])


def test_an_unchanged_stored_model_is_not_rehashed(tiny_home, tmp_path, monkeypatch):
    """The sha256 check on load is cheap: a second load of an unchanged file reads the stat cache only."""
    from MedDDPMSynthLib.store import models

    monkeypatch.setenv("MEDDDPMSYNTH_HOME", str(tmp_path / "home"))
    models.import_model(TINY_CKPT, name="mine", grid_xyz=(16, 16, 16), spacing_mm=(12.0, 12.0, 12.0))
    hashed = []
    real = models.file_sha256
    monkeypatch.setattr(models, "file_sha256", lambda p: hashed.append(p) or real(p))
    models.load_named_model("mine")
    models.load_named_model("mine")
    assert len(hashed) == 1


@pytest.mark.parametrize("code, advice", [
    ("ENOSPC", "the disk is full; free disk space"),
    ("EROFS", "the file system is read-only; choose an output folder on a writable disk"),
    ("EACCES", "no permission to write there"),
])
def test_write_failures_get_advice_that_fits(code, advice):
    """'free disk space' only for a full disk: a read-only file system or a permission needs another folder."""
    import errno

    from MedDDPMSynthLib.io.write_errors import write_advice

    number = getattr(errno, code)
    assert write_advice(OSError(number, os.strerror(number))).startswith(advice)
    assert write_advice(RuntimeError(f"ITK ERROR: could not write: {os.strerror(number)}")).startswith(advice)


def test_read_only_dataset_folder_is_refused_before_any_work(tiny_home, tmp_path, capsys, monkeypatch):
    """A dataset -o on a read-only file system (root: a read-only tmpfs mount; others: a 0555 folder)."""
    out = tmp_path / "ro"
    out.mkdir()
    masks = tmp_path / "masks"
    write_mask(masks / "case0.nii.gz", head_labels(size=(20, 20, 16), spacing=(8, 8, 8), tumour_radius_mm=20),
               spacing=(8.0, 8.0, 8.0))
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(out)]).returncode:
            pytest.skip("cannot mount a read-only tmpfs here")
        undo = ["umount", str(out)]
    else:
        out.chmod(0o555)
        undo = ["chmod", "755", str(out)]
    monkeypatch.setenv("MEDDDPMSYNTH_HOME", str(tiny_home))
    try:
        code, _, err = run_cli(["dataset", "--masks", masks, "--model", "tiny16", "-o", out / "ds", "--quiet"], capsys)
    finally:
        subprocess.run(undo, check=True)
    assert code == 2 and "Traceback" not in err, err
    assert message_lines(err) == [message_lines(err)[0]] and "cannot write in" in err and "read-only" in err, err
    assert not (out / "ds").exists()

