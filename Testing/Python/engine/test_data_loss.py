"""Nothing lost (issue 20): an output that is an input is refused everywhere, even with --overwrite; a
dangling symlink at -o counts as an existing output; SIGTERM during generate's write phase cleans up like
Ctrl-C; removing one of two models whose names differ only in case keeps the other's file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from cli_helpers import TINY_CKPT, interruptible, message_lines, run_cli, snapshot, write_mask


pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)

@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDDDPMSYNTH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _refused(code, stderr, *phrases):
    assert code == 2, stderr
    lines = message_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.mark.parametrize("via", ["same path", "symlink to the mask", "hard link to the mask"])
def test_tumor_edit_never_overwrites_its_input_mask(tmp_path, capsys, via):
    mask = write_mask(tmp_path / "mask.nii.gz")
    output = tmp_path / "out.nii.gz"
    if via == "same path":
        output = mask
    elif via == "symlink to the mask":
        output.symlink_to(mask)
    else:
        os.link(mask, output)
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(["tumor", "shift", "--mask", mask, "--vector", "4,0,0", "-o", output, "--overwrite"],
                              capsys)
    _refused(code, stderr, "is the input", "choose another output")
    assert snapshot(tmp_path) == before


def test_generate_and_insert_refuse_an_output_that_is_an_input(tmp_path, capsys):
    mask = write_mask(tmp_path / "mask.nii.gz")
    link = tmp_path / "alias.nii.gz"
    link.symlink_to(mask)
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(["generate", "--mask", mask, "--model", "demo", "-o", link, "--overwrite",
                               "--device", "cpu", "--quiet"], capsys)
    _refused(code, stderr, "input", "choose another output")
    # insert writes <scan>_with_tumor...: a tumour mask named like that output is an input
    scan = write_mask(tmp_path / "scan.nii.gz")
    tumour = write_mask(tmp_path / "o" / "scan_with_tumor.nii.gz")
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(["insert", "--scan", scan, "--tumor", tumour, "-o", tmp_path / "o", "--overwrite",
                               "--device", "cpu", "--quiet"], capsys)
    _refused(code, stderr, "is the input", "choose another output")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["tumor", "generate"])
def test_a_dangling_symlink_at_the_output_is_not_replaced_without_overwrite(tmp_path, capsys, command):
    mask = write_mask(tmp_path / "mask.nii.gz")
    link = tmp_path / "result.nii.gz"
    link.symlink_to(tmp_path / "elsewhere" / "gone.nii.gz")  # the target does not exist
    args = (["tumor", "shift", "--mask", mask, "--vector", "4,0,0", "-o", link] if command == "tumor" else
            ["generate", "--mask", mask, "--model", "demo", "-o", link, "--device", "cpu", "--quiet"])
    code, _, stderr = run_cli(args, capsys)
    _refused(code, stderr, "already exists", "--overwrite")
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "elsewhere" / "gone.nii.gz")
    code, _, stderr = run_cli([*args, "--overwrite"], capsys)
    assert code == 0, stderr
    assert link.is_file() and not link.is_symlink()  # replaced by the new file, the target untouched
    assert not (tmp_path / "elsewhere").exists()


# A subprocess that pauses inside generate's write phase (after the first staged image) until the test
# has sent its signal: the signal lands deterministically in that phase, no sleeps.
PAUSED_GENERATE = """
import sys
from MedDDPMSynthLib.io import outputs
from MedDDPMSynthLib.cli.commands import main

write_image = outputs.StagedOutput.write_image


def paused(self, image, destination):
    write_image(self, image, destination)
    print("staged", destination.name, flush=True)
    sys.stdin.readline()  # the signal arrives while the command waits here


outputs.StagedOutput.write_image = paused
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_the_write_phase_leaves_nothing(tmp_path, signum, code, tiny_demo_file):
    mask = write_mask(tmp_path / "mask.nii.gz")
    out = tmp_path / "new" / "out"
    before = snapshot(tmp_path)
    env = {**os.environ, "MEDDDPMSYNTH_HOME": str(tmp_path / "home"), "MEDDDPMSYNTH_DEMO_MODEL": str(tiny_demo_file)}
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED_GENERATE, "generate", "--mask", str(mask), "--model", "demo", "-o", str(out),
         "--samples", "2", "--device", "cpu", "--quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=interruptible,
    )
    try:
        line = process.stdout.readline()  # waits for the event: one image staged, the rest not
        if line.startswith("sampler: "):  # the command's line saying which sampler it chose comes first
            line = process.stdout.readline()
        assert line.startswith("staged "), process.stderr.read()
        assert list(out.glob(".medddpm-partial-*")), "the write phase has a staging folder"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, stderr
    assert "nothing was written" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "new").exists(), "no new empty output folder, no .medddpm-partial-*"
    assert snapshot(tmp_path) == before


def test_removing_one_of_two_models_differing_in_case_keeps_the_other(home, tmp_path, capsys):
    code, _, stderr = run_cli(["models", "import", TINY_CKPT, "--name", "mine"], capsys)
    assert code == 0, stderr
    catalogue = home / "models.json"
    data = json.loads(catalogue.read_text())
    (entry,) = data["models"]
    # an older or hand-edited catalogue holding 'Mine' too, listed first, with its own file
    shutil.copyfile(home / "models" / entry["file"], home / "models" / ("Mine" + entry["file"][4:]))
    data["models"].insert(0, {**entry, "name": "Mine", "file": "Mine" + entry["file"][4:]})
    catalogue.write_text(json.dumps(data))
    files = sorted(p.name for p in (home / "models").iterdir())

    code, _, stderr = run_cli(["models", "remove", "MINE"], capsys)  # matches both only by case: refused
    _refused(code, stderr, "differ only in case", "exact name")
    assert sorted(p.name for p in (home / "models").iterdir()) == files

    code, out, stderr = run_cli(["models", "remove", "mine"], capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in (home / "models").iterdir()) == ["Mine" + entry["file"][4:]]
    assert [e["name"] for e in json.loads(catalogue.read_text())["models"]] == ["Mine"]

    # two entries sharing one file: removing one keeps the file for the other
    data = json.loads(catalogue.read_text())
    data["models"].append({**data["models"][0], "name": "copy"})
    catalogue.write_text(json.dumps(data))
    code, out, stderr = run_cli(["models", "remove", "copy"], capsys)
    assert code == 0 and "kept" in out, stderr
    assert (home / "models" / data["models"][0]["file"]).is_file()


@pytest.mark.parametrize("vector", ["1e308,0,0", "0,-1e308,1e308", "5000,0,0"])
def test_an_absurd_shift_is_refused_not_a_silent_tumour_removal(tmp_path, capsys, vector):
    mask = write_mask(tmp_path / "mask.nii.gz")
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(["tumor", "shift", "--mask", mask, f"--vector={vector}", "-o", tmp_path / "s.nii.gz"],
                              capsys)
    _refused(code, stderr, "longer than the mask is across", "give a shift of a few mm")
    assert snapshot(tmp_path) == before


def test_models_export_never_overwrites_its_source(tmp_path, capsys):
    first = tmp_path / "tiny.safetensors"
    code, _, stderr = run_cli(["models", "export", TINY_CKPT, "-o", first, "--grid", "32,32,16", "--spacing", "6,6,6"],
                              capsys)
    assert code == 0, stderr
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(["models", "export", first, "-o", first, "--overwrite", "--dtype", "fp32"], capsys)
    _refused(code, stderr, "is the input", "choose another output")
    assert snapshot(tmp_path) == before


def test_an_output_folder_that_is_a_dangling_symlink_is_refused_before_any_work(tmp_path, capsys):
    mask = write_mask(tmp_path / "mask.nii.gz")
    folder = tmp_path / "results"
    folder.symlink_to(tmp_path / "missing" / "deeper")
    mask_bytes = mask.read_bytes()
    code, _, stderr = run_cli(["generate", "--mask", mask, "--model", "demo", "-o", folder, "--device", "cpu"],
                              capsys)
    _refused(code, stderr, "does not exist", "choose another output")
    assert "generating:" not in stderr  # refused before sampling, not after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz", "results"] and folder.is_symlink()
    assert mask.read_bytes() == mask_bytes
