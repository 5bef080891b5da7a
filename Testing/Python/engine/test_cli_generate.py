"""``medddpm-synth generate`` end to end: real mask files, real checkpoints, the real command line.

Happy paths (folder and one-file outputs, provenance, preview, seeds, intensity, geometry in LPS, RAS
and oblique + anisotropic, custom label values), equality with the official ``sample.py`` output,
the BraTS "done when" scenario on a 240x240x155 segmentation, and Ctrl-C. Most runs call
``MedDDPMSynthLib.cli.commands.main`` in this process; the console script, ``python -m`` and SIGINT run in a
subprocess. The bad-input catalogue is in test_bad_inputs.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from cli_helpers import (
    LPS,
    OFFICIAL,
    RAS,
    REPO,
    TINY_CKPT,
    assert_same_geometry,
    head_labels,
    image_from_xyz,
    interruptible,
    message_lines,
    oblique_direction,
    run_cli,
    save_random_checkpoint,
    write_mask,
)
from MedDDPMSynthLib import WHOLE_HEAD, UNetConfig
from MedDDPMSynthLib.workflows.pipeline import GenerateRequest, plan_outputs

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)

BRATS_SEG = REPO / "Testing" / "Data" / "med-ddpm-samples" / "brats2021" / "seg" / "BraTS2021_00529_seg.nii.gz"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """Never touch the user's data folder."""
    path = tmp_path / "home"
    monkeypatch.setenv("MEDDDPMSYNTH_HOME", str(path))
    return path


def read(path: Path) -> tuple[sitk.Image, np.ndarray]:
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def generate(capsys, mask: Path, out: Path, *extra) -> str:
    code, stdout, stderr = run_cli(["generate", "--mask", mask, "--model", "demo", "-o", out, "--device", "cpu",
                                    *extra], capsys)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    return stdout


# a half-size head (80 x 80 x 64 mm) on a 16^3 grid of the test model's 6 mm voxels: an eighth of the 32^3
# voxels per network pass, for the tests whose claims do not depend on the size (samples differ, reruns equal)
SMALL_GRID = ("--grid", "16,16,16")


def small_mask(path: Path, **geometry) -> Path:
    return write_mask(path, head_labels(size=(20, 20, 16)), **geometry)


def subprocess_env(home: Path) -> dict:
    return {**os.environ, "MEDDDPMSYNTH_HOME": str(home), "PYTHONUNBUFFERED": "1"}


# -------------------------------------------------------------------------------------- happy paths


def test_folder_output_files_provenance_and_preview(tmp_path, capsys):
    mask = write_mask(tmp_path / "mask.nii.gz", origin=(-80.0, -80.0, -60.0), direction=LPS)
    out = tmp_path / "out"
    stdout = generate(capsys, mask, out, "--seed", "3")

    plan = plan_outputs(GenerateRequest(mask=mask, output=out), WHOLE_HEAD.modalities)
    expected = {p.name for p in plan.all()}
    assert expected == {"mask_s00_t1c.nii.gz", "mask_mask.nii.gz", "provenance.json", "preview.png"}
    assert {p.name for p in out.iterdir()} == expected  # and no staging folder left behind
    assert [line for line in stdout.splitlines() if line.startswith("wrote ")] == [f"wrote {p}" for p in plan.all()]

    image, array = read(plan.images[0][0])
    assert_same_geometry(image, sitk.ReadImage(str(mask)), atol=1e-6)
    assert np.isfinite(array).all() and -1.0 <= array.min() and array.max() <= 1.0 and array.std() > 0
    assert plan.mask.read_bytes() == mask.read_bytes()

    prov = json.loads(plan.provenance.read_text())
    assert prov["seeds"] == [3]
    demo_file = Path(os.environ["MEDDDPMSYNTH_DEMO_MODEL"])  # conftest's tiny model with its test grid
    assert prov["model"]["sha256"] == hashlib.sha256(demo_file.read_bytes()).hexdigest()
    assert prov["model"]["name"] == "demo" and prov["model"]["family"] == "whole_head"
    assert prov["model"]["grid_xyz"] == [32, 32, 32] and prov["model"]["spacing_mm"] == [6.0, 6.0, 6.0]
    assert prov["mask"]["sha256"] == hashlib.sha256(mask.read_bytes()).hexdigest()
    assert prov["geometry"]["mode"] == "physical"
    grid = prov["geometry"]["input_grid"]
    assert grid["size"] == [40, 40, 30] and grid["spacing"] == [4.0, 4.0, 4.0] and grid["direction"] == list(LPS)
    assert grid["origin"] == [-80.0, -80.0, -60.0]
    # no sampler flags on the CPU: the preview preset (for this T = 10 test model: ddim with half its steps)
    assert prov["intensity"] == "raw" and prov["sampler"]["name"] == "ddim" and prov["sampler"]["steps"] == 5
    assert prov["sampler"]["preset"] == "preview" and prov["sampler"]["reason"].startswith("the default on a CPU")
    assert {"medddpm_synth", "torch", "numpy", "SimpleITK", "nibabel", "python"} <= set(prov["versions"])
    assert sorted(prov["outputs"]) == sorted(expected - {"provenance.json"})

    preview = sitk.ReadImage(str(plan.preview))
    assert preview.GetDimension() == 2 and preview.GetNumberOfComponentsPerPixel() == 3
    assert min(preview.GetSize()) >= 32


def test_one_file_output_in_ras_and_unit_intensity_is_raw_rescaled(tmp_path, capsys):
    mask = small_mask(tmp_path / "ras.nii.gz", origin=(90.0, 100.0, -55.0), direction=RAS)
    raw, unit = tmp_path / "raw.nii.gz", tmp_path / "unit.nii.gz"
    generate(capsys, mask, raw, "--seed", "11", "--intensity", "raw", *SMALL_GRID, "--quiet")
    generate(capsys, mask, unit, "--seed", "11", "--intensity", "unit", *SMALL_GRID, "--quiet")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == ["ras.nii.gz", "raw.nii.gz", "unit.nii.gz"]

    raw_image, raw_array = read(raw)
    unit_image, unit_array = read(unit)
    for image in (raw_image, unit_image):
        assert_same_geometry(image, sitk.ReadImage(str(mask)), atol=1e-6)
    assert -1.0 <= raw_array.min() < 0 and raw_array.max() <= 1.0
    assert 0.0 <= unit_array.min() and unit_array.max() <= 1.0
    np.testing.assert_allclose(unit_array, (raw_array + 1.0) / 2.0, atol=1e-6)


def test_oblique_anisotropic_mask_with_custom_label_values(tmp_path, capsys):
    spacing = (2.5, 3.5, 5.0)
    labels = head_labels(size=(56, 44, 26), spacing=spacing, head=5, tumour=9)
    mask = write_mask(tmp_path / "oblique.nrrd", labels, spacing, origin=(-61.3, 72.9, -40.2),
                      direction=oblique_direction(25))
    out = tmp_path / "synth.nii.gz"
    generate(capsys, mask, out, "--labels", "head=5,tumor=9", "--quiet")

    image, array = read(out)
    assert_same_geometry(image, sitk.ReadImage(str(mask)), atol=1e-6)
    assert image.GetSize() == (56, 44, 26)
    assert np.isfinite(array).all() and array.std() > 0
    head = sitk.GetArrayFromImage(sitk.ReadImage(str(mask))) > 0
    assert array[head].std() > 0  # the head got synthetic tissue, not the background constant


def test_samples_differ_and_a_rerun_is_identical(tmp_path, capsys):
    mask = small_mask(tmp_path / "mask.nii.gz")
    first, second = tmp_path / "first", tmp_path / "second"
    generate(capsys, mask, first, "--samples", "2", "--seed", "5", *SMALL_GRID, "--quiet")
    generate(capsys, mask, second, "--samples", "2", "--seed", "5", *SMALL_GRID, "--quiet")

    names = ["mask_s00_t1c.nii.gz", "mask_s01_t1c.nii.gz"]
    a0, a1 = (read(first / n)[1] for n in names)
    b0, b1 = (read(second / n)[1] for n in names)
    assert np.abs(a0 - a1).max() > 0.1  # two different samples
    np.testing.assert_array_equal(a0, b0)
    np.testing.assert_array_equal(a1, b1)
    for name in names:  # the files themselves are byte-identical too
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert json.loads((first / "provenance.json").read_text())["seeds"] == [5, 6]


# ------------------------------------------------------------------------------- official parity


def test_official_geometry_equals_the_official_sample_py_output(tmp_path, capsys, tiny_io):
    out = tmp_path / "official.nii.gz"
    code, _, stderr = run_cli(
        ["generate", "--mask", OFFICIAL / "wholehead_synth_mask.nii.gz", "--model", TINY_CKPT, "-o", out,
         "--seed", int(tiny_io["sample_seed"]), "--device", "cpu", "--geometry", "official", "--intensity", "raw",
         "--grid", "32,32,16", "--sampler", "ddpm", "--quiet"],  # the official sampler (the CPU default is the preview)
        capsys,
    )
    assert code == 0, stderr

    ours = nib.load(str(out))
    official = nib.load(str(OFFICIAL / "wholehead_sample_output.nii.gz"))
    array = np.asarray(ours.dataobj, dtype=np.float32)
    assert array.shape == (32, 32, 16)
    diff = np.abs(array - tiny_io["sample_output_saved_xyz"]).max()
    diff_file = np.abs(array - np.asarray(official.dataobj, dtype=np.float32)).max()
    print(f"max|ours - sample_output_saved_xyz| = {diff:.3g}; max|ours - official NIfTI| = {diff_file:.3g}")
    assert diff <= 2e-3 and diff_file <= 2e-3
    np.testing.assert_allclose(ours.affine, official.affine, atol=1e-6)
    np.testing.assert_allclose(ours.affine, tiny_io["affine"], atol=1e-6)


# ------------------------------------------------------------------------------------ BraTS "done when"


def _brats_seg_192() -> sitk.Image:
    """The public BraTS2021_00529 seg (preprocessed labels 1-4, 4 = brain) or an equivalent synthetic one."""
    if BRATS_SEG.is_file():
        return sitk.ReadImage(str(BRATS_SEG))
    size = (192, 192, 144)
    labels = head_labels(size=size, spacing=(1, 1, 1), head=4, tumour=2, tumour_radius_mm=20)
    c = (np.array(size) - 1) * np.array([0.55, 0.5, 0.5])
    idx = np.indices(size).astype(float)
    d2 = sum((idx[a] - c[a]) ** 2 for a in range(3))
    labels[d2 <= 12**2] = 3
    labels[d2 <= 6**2] = 1
    return image_from_xyz(labels.astype(np.float64), (1, 1, 1), (24.0, -215.0, 6.0), LPS)


def test_brats_segmentation_gives_four_modalities_on_its_own_grid(tmp_path, capsys, home):
    # a tiny random BraTS-format checkpoint, imported like a downloaded model_brats.pt
    ckpt = save_random_checkpoint(tmp_path / "tinybrats.pt", UNetConfig(8, 4, 32, (1, 1), 1, ()), timesteps=4)
    # 32 x 32 x 24 voxels of 6 mm cover BraTS's 192 x 192 x 144 mm field of view (a fast stand-in for 192x192x144)
    code, _, stderr = run_cli(["models", "import", ckpt, "--name", "tinybrats", "--grid", "32,32,24",
                               "--spacing", "6,6,6"], capsys)
    assert code == 0, stderr

    # a BraTS seg as distributed: LPS, 1 mm, 240 x 240 x 155 (pad the 192x192x144 crop back)
    seg = sitk.ConstantPad(_brats_seg_192(), [24, 24, 6], [24, 24, 5], 0)
    assert seg.GetSize() == (240, 240, 155) and seg.GetOrigin() == (0.0, -239.0, 0.0)
    pre = sitk.GetArrayFromImage(seg)
    raw = pre.copy()
    raw[pre == 3], raw[pre == 4] = 4, 5  # raw BraTS: 4 = enhancing; the brain gets its own label 5
    raw_path, pre_path = tmp_path / "BraTS_seg.nii.gz", tmp_path / "BraTS_seg_preprocessed.nii.gz"
    raw_image = sitk.GetImageFromArray(raw)
    raw_image.CopyInformation(seg)
    sitk.WriteImage(raw_image, str(raw_path), useCompression=True)
    sitk.WriteImage(sitk.Cast(seg, sitk.sitkUInt8), str(pre_path), useCompression=True)

    # the newcomer's command, through the console script
    script = shutil.which("medddpm-synth", path=str(Path(sys.executable).parent)) or "medddpm-synth"
    done = subprocess.run(
        [script, "generate", "--mask", str(raw_path), "--model", "tinybrats", "-o", str(tmp_path / "out") + "/",
         "--labels", "necrotic=1,edema=2,enhancing=4,brain=5", "--device", "cpu", "--quiet"],
        capture_output=True, text=True, env=subprocess_env(home), timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    brain = raw == 5
    for modality in ("t1", "t1ce", "t2", "flair"):
        image, array = read(tmp_path / "out" / f"BraTS_seg_s00_{modality}.nii.gz")
        assert_same_geometry(image, seg, atol=1e-4)
        assert array.shape == (155, 240, 240) and np.isfinite(array).all()
        assert array[brain].std() > 0  # synthetic tissue inside the brain

    # the preprocessed convention (1 necrotic, 2 oedema, 3 enhancing, 4 brain) needs no --labels
    code, _, stderr = run_cli(["generate", "--mask", pre_path, "--model", "tinybrats", "-o", tmp_path / "pre.nii.gz",
                               "--device", "cpu", "--quiet"], capsys)
    assert code == 0, stderr
    for modality in ("t1", "t1ce", "t2", "flair"):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(tmp_path / f"pre_{modality}.nii.gz"))
        reader.ReadImageInformation()
        assert reader.GetSize() == (240, 240, 155)
        np.testing.assert_allclose(reader.GetSpacing(), seg.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(reader.GetOrigin(), seg.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(reader.GetDirection(), seg.GetDirection(), atol=1e-4)


# ------------------------------------------------------------------------------ processes and Ctrl-C


def test_python_m_refuses_bad_input_with_one_line_and_exit_2(tmp_path, home):
    done = subprocess.run(
        [sys.executable, "-m", "MedDDPMSynthLib", "generate", "--mask", str(tmp_path / "missing.nii.gz"),
         "--model", "demo", "-o", str(tmp_path / "out")],
        capture_output=True, text=True, env=subprocess_env(home), timeout=120,
    )
    assert done.returncode == 2
    lines = message_lines(done.stderr)  # fd-level: also catches anything a C library prints
    assert len(lines) == 1 and lines[0].startswith("error: the mask file") and "check the path" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_ctrl_c_cancels_and_leaves_nothing(tmp_path, home):
    # a tiny whole-head model with T = 400: minutes of sampling, so the interrupt surely lands mid-run
    slow = save_random_checkpoint(tmp_path / "slow.pt", UNetConfig(3, 1, 32, (1, 1), 1, (2,)), timesteps=400)
    mask = write_mask(tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "MedDDPMSynthLib", "generate", "--mask", str(mask), "--model", str(slow),
         "-o", str(out), "--grid", "32,32,32", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(home), preexec_fn=interruptible,
    )
    stderr = b""
    try:
        # wait for the event, not for a time: the bar counting sampling steps ("| 1/400") means the run is
        # inside the sampler; the deadline only catches a child that hangs, however busy the machine is
        deadline = time.monotonic() + 600
        while not re.search(rb"\|\s*[1-9]\d*/\d+", stderr):
            assert proc.poll() is None, "the run ended before its first step:\n" + stderr.decode(errors="replace")
            assert time.monotonic() < deadline, "no sampling step in 600 s:\n" + stderr.decode(errors="replace")
            if select.select([proc.stderr], [], [], 1.0)[0]:
                stderr += os.read(proc.stderr.fileno(), 4096)
        assert proc.poll() is None, "the run ended before it could be cancelled; make the model slower"
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rest_out, rest_err = proc.communicate(timeout=300)
        waited = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = (stderr + rest_err).decode(errors="replace")
    print(f"exit {proc.returncode} {waited:.2f} s after SIGINT")
    assert proc.returncode == 130, stderr
    assert "cancelled" in stderr and "Traceback" not in stderr
    # it stops at the step it is in (one step is ~0.2 s on 2 idle cores) rather than sampling the remaining
    # ~400; the bound leaves room for a busy machine, and exit 130 + "cancelled" already prove no run to the end
    assert waited < 30
    assert not out.exists()
    assert not list(tmp_path.rglob(".medddpm-partial-*"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == ["mask.nii.gz", "slow.pt"]


# ------------------------------------------------------------------------- --step-spacing (was --spacing)


def test_step_spacing_has_its_own_name_and_the_old_flag_still_works(tmp_path, capsys):
    """--step-spacing names the time-step spacing; --spacing (voxel spacing in mm for train / models import)
    still means the step spacing here, with a deprecation warning, and a disagreeing pair is refused."""
    mask = small_mask(tmp_path / "mask.nii.gz")
    fast = ["--sampler", "ddim", "--steps", "3", *SMALL_GRID]
    generate(capsys, mask, tmp_path / "new", *fast, "--step-spacing", "quadratic")
    assert json.loads((tmp_path / "new" / "provenance.json").read_text())["sampler"]["spacing"] == "quadratic"
    code, _, stderr = run_cli(["generate", "--mask", mask, "--model", "demo", "-o", tmp_path / "old", "--device", "cpu",
                               *fast, "--spacing", "quadratic"], capsys)
    assert code == 0, stderr
    assert "warning: --spacing is deprecated for the time-step spacing; use --step-spacing" in stderr
    assert json.loads((tmp_path / "old" / "provenance.json").read_text())["sampler"]["spacing"] == "quadratic"
    code, _, stderr = run_cli(["generate", "--mask", mask, "--model", "demo", "-o", tmp_path / "both", "--device", "cpu",
                               *fast, "--spacing", "quadratic", "--step-spacing", "uniform"], capsys)
    assert code == 2 and "error: --spacing quadratic and --step-spacing uniform disagree" in stderr
    assert not (tmp_path / "both").exists()
