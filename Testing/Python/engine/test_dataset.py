"""``medddpm-synth dataset``: nnU-Net layout, byte-identical resumption, --shard and torchrun equal one run,
bad input refused with one line and nothing written.

The tiny official-format model on a 16^3 grid of 12 mm, ddim with 2 steps, 3 small masks x 2 samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cli_helpers import OFFICIAL, REPO, head_labels, interruptible, message_lines, run_cli, snapshot, write_mask

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)

FAST = ["--model", "tiny16", "--sampler", "ddim", "--steps", "2", "--samples-per-mask", "2", "--quiet"]
CASES = [f"case{i}_orig_s{n:03d}" for i in range(3) for n in range(2)]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A private catalogue with the tiny model as 'tiny16'; one torch thread, as the torchrun workers use."""
    home = tmp_path_factory.mktemp("home")
    saved = os.environ.get("MEDDDPMSYNTH_HOME"), torch.get_num_threads()
    os.environ["MEDDDPMSYNTH_HOME"] = str(home)
    torch.set_num_threads(1)
    from MedDDPMSynthLib.store.models import import_model

    import_model(OFFICIAL / "tiny_wholehead_ckpt.pt", name="tiny16", grid_xyz=(16, 16, 16), spacing_mm=(12.0, 12.0, 12.0))
    yield home
    if saved[0] is None:
        os.environ.pop("MEDDDPMSYNTH_HOME", None)
    else:
        os.environ["MEDDDPMSYNTH_HOME"] = saved[0]
    torch.set_num_threads(saved[1])


@pytest.fixture(scope="module")
def masks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("masks")
    for i, centre in enumerate([(0.55, 0.5, 0.5), (0.45, 0.5, 0.5), (0.5, 0.55, 0.45)]):
        labels = head_labels(size=(20, 20, 16), spacing=(8, 8, 8), tumour_centre=centre, tumour_radius_mm=20)
        write_mask(folder / f"case{i}.nii.gz", labels, spacing=(8.0, 8.0, 8.0))
    return folder


@pytest.fixture(scope="module")
def clean(home, masks, tmp_path_factory) -> Path:
    """One uninterrupted single-process run: the reference every other run must equal byte for byte."""
    out = tmp_path_factory.mktemp("clean") / "Dataset501_Synth"
    from MedDDPMSynthLib.cli.commands import main

    assert main(["dataset", "--masks", str(masks), "-o", str(out), *FAST]) == 0
    return out


def contents(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` except the per-process logs (they hold timings) and the lock."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "logs" and p.name != ".medddpm-dataset.lock"
    }


def test_nnunet_layout(clean, masks):
    names = {str(p.relative_to(clean)) for p in clean.rglob("*") if p.is_file() and "logs" not in p.parts}
    expected = {
        *(f"imagesTr/{c}_0000.nii.gz" for c in CASES), *(f"labelsTr/{c}.nii.gz" for c in CASES),
        *(f"provenance/{c}.json" for c in CASES),
        "dataset.json", "manifest.csv", "contact_sheet.png", "medddpm_dataset.json", ".medddpm-dataset.lock",
    }
    assert names == expected
    meta = json.loads((clean / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1c"}
    assert meta["labels"] == {"background": 0, "head": 1, "tumor": 2}
    assert meta["numTraining"] == 6 and meta["file_ending"] == ".nii.gz"
    for case in CASES:
        image = sitk.ReadImage(str(clean / "imagesTr" / f"{case}_0000.nii.gz"))
        label = sitk.ReadImage(str(clean / "labelsTr" / f"{case}.nii.gz"))
        mask = sitk.ReadImage(str(masks / f"{case.split('_')[0]}.nii.gz"))
        for a, b in ((image, label), (label, mask)):  # one grid: the mask's own
            assert a.GetSize() == b.GetSize()
            np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
        assert label.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayViewFromImage(label))) <= {0, 1, 2}
        record = json.loads((clean / "provenance" / f"{case}.json").read_text())
        assert record["case"] == case and record["mask"]["sha256"] and record["model"]["sha256"]
        assert record["sampler"]["name"] == "ddim" and record["edit"]["op"] == "none"
    rows = (clean / "manifest.csv").read_text().splitlines()
    assert rows[0] == "case,mask,mask_sha256,edit,sample,seed,files" and [r.split(",")[0] for r in rows[1:]] == CASES
    seeds = [int(r.split(",")[5]) for r in rows[1:]]
    assert seeds[1] == seeds[0] + 1 and len(set(seeds)) == 6  # sample n of a variant: base + n
    assert sitk.ReadImage(str(clean / "contact_sheet.png")).GetNumberOfComponentsPerPixel() == 3


def test_cancel_then_resume_is_byte_identical(clean, masks, tmp_path, capsys, monkeypatch):
    out = tmp_path / "resumed"
    import MedDDPMSynthLib.cli.dataset as cli_dataset

    build = cli_dataset.build_dataset

    def interrupted(*args, **kwargs):  # Ctrl-C right after the third case
        def progress(done, total):
            if done == 3:
                raise KeyboardInterrupt

        return build(*args[:5], progress)

    monkeypatch.setattr(cli_dataset, "build_dataset", interrupted)
    code, _, err = run_cli(["dataset", "--masks", masks, "-o", out, *FAST], capsys)
    assert code == 130 and "cancelled" in err
    kept = {p.name for p in (out / "labelsTr").iterdir()}
    assert kept == {f"{c}.nii.gz" for c in CASES[:3]}  # only complete cases, no temporary files
    assert not [p for p in out.rglob(".*") if p.name != ".medddpm-dataset.lock"]
    # a partial case on top: one file of a complete case lost; it is redone
    (out / "imagesTr" / f"{CASES[1]}_0000.nii.gz").unlink()
    monkeypatch.setattr(cli_dataset, "build_dataset", build)
    code, out_text, _ = run_cli(["dataset", "--masks", masks, "-o", out, *FAST], capsys)
    assert code == 0 and "4 case(s) written, 2 already complete" in out_text
    assert contents(out) == contents(clean)


def test_shards_equal_one_run(clean, masks, tmp_path, capsys):
    out = tmp_path / "sharded"
    for shard in ("1/2", "0/2"):
        code, _, err = run_cli(["dataset", "--masks", masks, "-o", out, *FAST, "--shard", shard], capsys)
        assert code == 0, err
    assert contents(out) == contents(clean)
    assert len(list((out / "logs").iterdir())) == 2


def test_torchrun_two_processes_equal_one_run(clean, masks, home, tmp_path):
    out = tmp_path / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDDDPMSYNTH_HOME": str(home)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "MedDDPMSynthLib", "dataset", "--masks", str(masks), "-o", str(out), *FAST]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert contents(out) == contents(clean)
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "shard-0-of-1_rank-0-of-2.log", "shard-0-of-1_rank-1-of-2.log"]


def _bad_setup(kind: str, root: Path, masks: Path) -> tuple[list, str]:
    out = root / "out"
    if kind == "empty masks folder":
        (root / "none").mkdir()
        return ["--masks", root / "none", "-o", out], "no mask files"
    if kind == "unreadable mask":
        bad = root / "bad"
        bad.mkdir()
        (bad / "a.nii.gz").write_bytes(b"not an image")
        return ["--masks", bad, "-o", out], "a.nii.gz"
    if kind in ("shard 2/2", "shard malformed"):
        return ["--masks", masks, "-o", out, "--shard", "2/2" if kind == "shard 2/2" else "one/two"], "--shard"
    if kind == "unknown edits":
        return ["--masks", masks, "-o", out, "--edits", "warp"], "unknown --edits 'warp'"
    if kind == "unknown format":
        return ["--masks", masks, "-o", out, "--format", "coco"], "unknown --format 'coco'"
    if kind == "other settings":
        out.mkdir()
        (out / "medddpm_dataset.json").write_text(json.dumps({"format": "medddpm-synth dataset", "seed": 99}))
        return ["--masks", masks, "-o", out], "made with other settings"
    if kind == "foreign folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        return ["--masks", masks, "-o", out], "holds no medddpm-synth dataset"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty masks folder", "unreadable mask", "shard 2/2", "shard malformed",
                                  "unknown edits", "unknown format", "other settings", "foreign folder"])
def test_bad_input_one_line_exit_2_nothing_written(kind, home, masks, tmp_path, capsys):
    args, expected = _bad_setup(kind, tmp_path, masks)
    before = snapshot(tmp_path)
    code, _, err = run_cli(["dataset", *args, *FAST], capsys)
    lines = message_lines(err)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert snapshot(tmp_path) == before


def test_folders_layout_with_edits_batched_sharded_and_resumed(home, masks, tmp_path, capsys):
    """--format folders is what 'medddpm-synth train' reads; a scale sweep adds variants; with --batch 2 the
    work units are sample blocks, so shards and a resume that redoes part of a block still equal one run."""
    from MedDDPMSynthLib.domain.families import WHOLE_HEAD
    from MedDDPMSynthLib.data.train_data import find_pairs

    one = tmp_path / "one_mask"
    one.mkdir()
    (one / "case0.nii.gz").write_bytes((masks / "case0.nii.gz").read_bytes())
    args = ["--masks", one, *FAST, "--samples-per-mask", "3", "--batch", "2", "--format", "folders",
            "--edits", "scale-sweep", "--scale-factors", "0.5,1.5"]
    assert run_cli(["dataset", *args, "-o", tmp_path / "a"], capsys)[0] == 0
    cases = sorted(p.name[: -len(".nii.gz")] for p in (tmp_path / "a" / "masks").iterdir())
    assert cases == [f"case0_{v}_s{n:03d}" for v in ("orig", "scale_0p500", "scale_1p500") for n in range(3)]
    pairs = find_pairs(tmp_path / "a" / "masks", tmp_path / "a" / "images", WHOLE_HEAD)
    assert [m.name for m, _ in pairs] == [f"{c}.nii.gz" for c in cases]
    tumour = [int((sitk.GetArrayFromImage(sitk.ReadImage(str(m))) == 2).sum()) for m, _ in pairs[::3]]
    assert tumour[1] < tumour[0] < tumour[2]  # 0.5 shrinks, 1.5 grows the tumour
    assert not (tmp_path / "a" / "dataset.json").exists()
    for shard in ("1/2", "0/2"):
        assert run_cli(["dataset", *args, "-o", tmp_path / "b", "--shard", shard], capsys)[0] == 0
    (tmp_path / "b" / "images" / "case0_scale_1p500_s001.nii.gz").unlink()  # second sample of a 2-block
    code, text, _ = run_cli(["dataset", *args, "-o", tmp_path / "b"], capsys)
    assert code == 0 and "1 case(s) written, 8 already complete" in text
    assert contents(tmp_path / "b") == contents(tmp_path / "a")


def test_brats_dataset_json_and_file_names(tmp_path):
    """BraTS: four channel files per case in the nnU-Net order T1, T1ce, T2, FLAIR; labels 0..4 consecutive."""
    from MedDDPMSynthLib.data.dataset_layout import Layout, nnunet_dataset_json
    from MedDDPMSynthLib.domain.families import BRATS

    meta = nnunet_dataset_json(BRATS, 5)
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert meta["labels"] == {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 3, "brain": 4}
    assert meta["numTraining"] == 5 and meta["file_ending"] == ".nii.gz"
    nnunet, folders = Layout(tmp_path, "nnunet", BRATS), Layout(tmp_path, "folders", BRATS)
    assert [p.name for p in nnunet.images("c")] == [f"c_000{i}.nii.gz" for i in range(4)]
    assert [p.name for p in folders.images("c")] == [f"c_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]
    assert nnunet.label("c").parent.name == "labelsTr" and folders.label("c").parent.name == "masks"


def test_ctrl_c_on_the_command_line_keeps_only_complete_cases(home, masks, tmp_path):
    """A real SIGINT to the running command: exit 130, every case in the manifest complete, no stray files."""
    import signal
    import time

    out = tmp_path / "sigint"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDDDPMSYNTH_HOME": str(home)}
    command = [sys.executable, "-m", "MedDDPMSynthLib", "dataset", "--masks", str(masks), "-o", str(out), *FAST,
               "--samples-per-mask", "30"]
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=interruptible)
    # wait for the event (the first complete case in the manifest), polling; the deadline only catches a hang
    deadline = time.monotonic() + 600
    while not (out / "manifest.csv").is_file():
        assert process.poll() is None, f"the command ended (exit {process.returncode}) before its first case"
        assert time.monotonic() < deadline, "no manifest.csv after 600 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-2000:]
    rows = (out / "manifest.csv").read_text().splitlines()[1:]
    cases = sorted(r.split(",")[0] for r in rows)
    assert 1 <= len(cases) < 90
    assert sorted(p.name[: -len(".nii.gz")] for p in (out / "labelsTr").iterdir()) == cases
    assert sorted(p.name[: -len("_0000.nii.gz")] for p in (out / "imagesTr").iterdir()) == cases
    assert sorted(p.stem for p in (out / "provenance").iterdir()) == cases
    assert not [p for p in out.rglob(".*") if p.name != ".medddpm-dataset.lock"]


def test_step_spacing_has_its_own_name_and_the_old_flag_still_works(home, masks, tmp_path, capsys):
    """As for generate: --step-spacing names the time-step spacing, --spacing still means it with a warning."""
    fast = ["--model", "tiny16", "--sampler", "ddim", "--steps", "2", "--quiet", "--shard", "1/3"]
    code, _, stderr = run_cli(["dataset", "--masks", masks, "-o", tmp_path / "new", *fast, "--step-spacing", "quadratic"],
                              capsys)
    assert code == 0, stderr
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "new" / "provenance").glob("*.json")][:1]
    assert record["sampler"]["spacing"] == "quadratic"
    code, _, stderr = run_cli(["dataset", "--masks", masks, "-o", tmp_path / "old", *fast, "--spacing", "quadratic"],
                              capsys)
    assert code == 0, stderr
    assert "warning: --spacing is deprecated for the time-step spacing; use --step-spacing" in stderr
    old = [json.loads(p.read_text()) for p in (tmp_path / "old" / "provenance").glob("*.json")]
    assert old and all(r["sampler"]["spacing"] == "quadratic" for r in old)
