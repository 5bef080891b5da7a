"""The second bad-input table: hostile, odd-but-valid and faulty inputs to every command (issue 20).

Rows are grouped by what used to go wrong: unbounded work (hangs), silent bad output, tracebacks and
unclear messages. Each row builds real files in ``tmp_path`` (checkpoints, masks, catalogues, dataset
folders), runs the real command line in this process and checks the contract of
``test_bad_inputs.py``: the documented exit code, exactly one ``error:`` line naming the problem and
the fix, no traceback, and no file created or changed (bytes and mtimes). ``generate``'s own table is
``test_bad_inputs.py``; faults during writing (signals, full disks, two writers) are in
``test_fault_injection.py``; the fixes that are behaviour, not refusals, in ``test_hostile_behaviour.py``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cli_helpers import TINY_CKPT, assert_one_clear_refusal, head_labels, image_from_xyz, message_lines, refusal_table, run_cli, write_mask
from cli_helpers import snapshot as _snapshot

FAST = ["--sampler", "ddim", "--steps", "2", "--quiet", "--device", "cpu"]


def snapshot(root: Path) -> dict:
    """cli_helpers.snapshot, but a FIFO or a symlink loop is recorded by name (reading it would block or fail)."""
    odd = {p for p in root.rglob("*") if p.is_symlink() and not p.exists() or p.exists() and not p.is_symlink()
           and not (p.is_file() or p.is_dir())}
    aside = root.parent / f"{root.name}-aside"  # outside root while the rest is read
    aside.mkdir(exist_ok=True)
    hidden = {p: p.rename(aside / str(p.relative_to(root)).replace(os.sep, "__")) for p in odd}
    try:
        return {**_snapshot(root), **{str(p.relative_to(root)): ("special", None, None) for p in odd}}
    finally:
        for original, aside in hidden.items():
            aside.rename(original)


@dataclass
class Env:
    dir: Path
    mask: Path  # a valid whole-head mask (1 head, 2 tumour), 40x40x30 at 4 mm
    monkeypatch: pytest.MonkeyPatch

    def gen(self, *extra, mask=None, model="tiny16", out=None) -> list:
        return ["generate", "--mask", mask or self.mask, "--model", model, "-o", out or self.dir / "out", *FAST, *extra]

    def masks_folder(self) -> Path:
        folder = self.dir / "masks"
        write_mask(folder / "case0.nii.gz", head_labels(size=(20, 20, 16), spacing=(8, 8, 8), tumour_radius_mm=20),
                   spacing=(8.0, 8.0, 8.0))
        return folder

    def checkpoint(self, name: str, change: Callable[[dict], None]) -> Path:
        """The tiny official checkpoint with its weights changed by ``change(ema_state)``."""
        raw = torch.load(TINY_CKPT, map_location="cpu", weights_only=True)
        change(raw["ema"])
        path = self.dir / name
        torch.save(raw, path)
        return path

    def safetensors(self, name: str, metadata: dict, change: Callable[[dict], None] | None = None) -> Path:
        from MedDDPMSynthLib.model.checkpoint import read_state_dict, save_safetensors

        path = self.dir / name
        state = read_state_dict(TINY_CKPT)[0]
        if change is not None:
            change(state)
        save_safetensors(path, state, metadata)
        return path

    def nifti_with_pixdim(self, name: str, pixdim) -> Path:
        """A valid mask whose NIfTI-1 header bytes say ``pixdim`` (nibabel.save would repair 0 to 1)."""
        path = self.mask_file(name)
        data = bytearray(gzip.decompress(path.read_bytes()))
        data[80:92] = struct.pack("<3f", *pixdim)  # pixdim[1..3]: float32 at byte 76 + 4
        path.write_bytes(gzip.compress(bytes(data)))
        return path

    def mask_file(self, name: str, labels=None) -> Path:
        return write_mask(self.dir / name, head_labels() if labels is None else labels)


CASES, case = refusal_table()  # name -> RefusalRow; @case(name, phrase, fix) registers a row


# ------------------------------------------------------------------------ unbounded work (hangs)


@case("tumor-shift-grid-of-billions", "512,192,024,000 edited masks, more than the 2,000", "use a larger step")
def _(t: Env):
    return ["tumor", "shift", "--mask", t.mask, "--grid-step", "0.01", "--extent", "40", "-o", t.dir / "shifts"]


@case("tumor-scale-sweep-of-a-million", "1,000,000 scaled masks, more than the 2,000", "smaller COUNT", usage=True)
def _(t: Env):
    return ["tumor", "scale", "--mask", t.mask, "--sweep", "2.0:0.5:1000000", "-o", t.dir / "scales"]


@case("dataset-shift-step-tiny", "8,012,006,000 edited masks", "use a larger --shift-step")
def _(t: Env):
    return ["dataset", "--masks", t.masks_folder(), "--model", "tiny16", "-o", t.dir / "ds", "--edits", "shift-grid",
            "--shift-step", "0.01", "--quiet"]  # extent 10 mm: (2 * 1000 + 1)^3 - 1 variants per mask


@case("grid-8-gib", "8,589,934,592 voxels", "give a smaller grid")
def _(t: Env):
    return t.gen("--grid", "2048,2048,2048")


@case("model-grid-metadata-huge", "1,073,741,824 voxels", "give a smaller grid")
def _(t: Env):
    return t.gen(model=t.safetensors("huge.safetensors", {"grid_xyz": "1024,1024,1024", "spacing_mm": "1,1,1"}))


@case("mask-is-a-fifo", "not a regular file", "give a")
def _(t: Env):
    fifo = t.dir / "pipe.nii.gz"
    os.mkfifo(fifo)
    return t.gen(mask=fifo)


# ---------------------------------------------------------------------------- silent bad output


@case("mask-spacing-nan", "voxel spacing (nan, 4.0, 4.0)", "positive number of mm")
def _(t: Env):
    return t.gen(mask=t.nifti_with_pixdim("nan_spacing.nii.gz", [np.nan, 4, 4]))


@case("mask-spacing-zero", "voxel spacing (0.0, 0.0, 4.0)", "positive number of mm")
def _(t: Env):
    return t.gen(mask=t.nifti_with_pixdim("zero_spacing.nii.gz", [0, 0, 4]))


@case("weights-int8", "non-float weights", "use the original checkpoint")
def _(t: Env):
    def to_int8(state):
        for key in [k for k in state if k.startswith("denoise_fn.")][:4]:
            state[key] = state[key].to(torch.int8)
    return t.gen("--grid", "16,16,16", model=t.checkpoint("int8.pt", to_int8))


@case("weights-complex", "non-float weights", "use the original checkpoint")
def _(t: Env):
    def to_complex(state):
        key = next(k for k in state if k.startswith("denoise_fn."))
        state[key] = state[key].to(torch.complex64)
    return t.gen("--grid", "16,16,16", model=t.checkpoint("complex.pt", to_complex))


@case("schedule-negated", "no valid diffusion schedule", "use the original checkpoint")
def _(t: Env):
    def negate(state):
        for key in ("betas", "alphas_cumprod"):
            state[key] = -state[key]
    return t.gen("--grid", "16,16,16", model=t.checkpoint("negated.pt", negate))


@case("weights-huge", "produced NaN or infinite values", "use the original checkpoint")
def _(t: Env):
    def blow_up(state):
        for key in [k for k in state if k.startswith("denoise_fn.") and k.endswith("weight")]:
            state[key] *= 1e30  # finite, so loaded; the activations overflow
    return t.gen(model=t.safetensors("huge.safetensors", {"grid_xyz": "16,16,16", "spacing_mm": "12,12,12"}, blow_up))


@case("weights-constant-output", "produced a constant image", "use the original checkpoint")
def _(t: Env):
    def saturate(state):
        state["denoise_fn.out.2.weight"].zero_()  # eps = 1e30 everywhere: x0 clipped to -1 in every voxel
        state["denoise_fn.out.2.bias"].fill_(1e30)
    return t.gen(model=t.safetensors("flat.safetensors", {"grid_xyz": "16,16,16", "spacing_mm": "12,12,12"}, saturate))


@case("stored-model-replaced", "has changed or is damaged since it was imported", "import the original again")
def _(t: Env):
    from MedDDPMSynthLib.store.models import import_model, models_dir

    entry = import_model(TINY_CKPT, name="mine", grid_xyz=(16, 16, 16), spacing_mm=(12.0, 12.0, 12.0))
    assert run_cli(t.gen(model="mine", out=t.dir / "first"), t.capsys)[0] == 0  # verified once (cached)
    stored = models_dir() / entry["file"]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: the cache must notice the rewrite, not the size
    stat = stored.stat()
    stored.write_bytes(bytes(data))
    os.utime(stored, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    return t.gen(model="mine")


@case("evaluate-all-nan-image", "contains NaN or infinite values", "give an image with finite intensities")
def _(t: Env):
    for folder in ("gen", "ref"):
        (t.dir / folder).mkdir()
    nan = image_from_xyz(np.full((32, 32, 32), np.nan, np.float32))
    sitk.WriteImage(nan, str(t.dir / "gen" / "case_s00_t1c.nii.gz"))
    sitk.WriteImage(image_from_xyz(np.random.default_rng(0).random((32, 32, 32), np.float32)),
                    str(t.dir / "ref" / "case.nii.gz"))
    return ["evaluate", "--generated", t.dir / "gen", "--reference", t.dir / "ref", "-o", t.dir / "report.json"]


# ---------------------------------------------------------------------- tracebacks -> one line


@case("seed-2-to-the-64", "seed 18446744073709551616 is out of range", "give a seed from 0 to", usage=True)
def _(t: Env):
    return t.gen("--seed", str(2**64))


@case("margin-1e308", "--margin 1e+308 mm is more than 100 mm", "give --margin 100 or less")
def _(t: Env):
    return t.gen("--margin", "1e308")


@case("mask-symlink-loop", "points to itself", "give the real file")
def _(t: Env):
    loop = t.dir / "loop.nii.gz"
    os.symlink(loop.name, loop)
    return t.gen(mask=loop)


@case("output-name-too-long", "more than the 255 this file system allows", "choose a shorter output name")
def _(t: Env):
    return t.gen(out=t.dir / ("x" * 300 + ".nii.gz"))


def _dataset_then(t: Env, damage: Callable[[Path], None]) -> list:
    args = ["dataset", "--masks", t.masks_folder(), "--model", "tiny16", "-o", t.dir / "ds", *FAST[:4], "--quiet"]
    assert run_cli(args, t.capsys)[0] == 0
    damage(t.dir / "ds" / "manifest.csv")
    return args


@case("manifest-not-utf8", "manifest.csv is damaged (not UTF-8 text)", "delete it and run the same command again")
def _(t: Env):
    return _dataset_then(t, lambda p: p.write_bytes(b"\xff\xfe\x00case\x80\x81\n"))


@case("manifest-without-columns", "manifest.csv is damaged (no column case, files)", "delete it")
def _(t: Env):
    return _dataset_then(t, lambda p: p.write_text("foo,bar\n1,2\n"))


@case("catalogue-grid-null", "has grid_xyz None, not three positive numbers", "repair it by hand")
def _(t: Env):
    return _catalogue_with(t, None)


@case("catalogue-grid-string", "has grid_xyz '128', not three positive numbers", "repair it by hand")
def _(t: Env):
    return _catalogue_with(t, "128")


def _catalogue_with(t: Env, grid) -> list:
    from MedDDPMSynthLib.store.models import catalogue_path, import_model

    import_model(TINY_CKPT, name="mine", grid_xyz=(16, 16, 16), spacing_mm=(12.0, 12.0, 12.0))
    data = json.loads(catalogue_path().read_text())
    data["models"][-1]["grid_xyz"] = grid
    catalogue_path().write_text(json.dumps(data))
    return t.gen(model="mine")


@case("safetensors-zero-spacing", "invalid 'spacing_mm' metadata ('0,0,0')", "--spacing A,B,C")
def _(t: Env):
    return t.gen(model=t.safetensors("zero.safetensors", {"grid_xyz": "16,16,16", "spacing_mm": "0,0,0"}))


@case("safetensors-malformed-grid", "invalid 'grid_xyz' metadata ('16,sixteen')", "--grid")
def _(t: Env):
    return t.gen(model=t.safetensors("bad.safetensors", {"grid_xyz": "16,sixteen", "spacing_mm": "1,1,1"}))


# ------------------------------------------------------------------------------ unclear messages


@case("label-uint64", "label value 9223372036854775813, larger than any label map uses", "small label values")
def _(t: Env):
    labels = head_labels().astype(np.uint64)
    labels[0, 0, 0] = 2**63 + 5  # as int64 this wraps to a negative number
    return t.gen(mask=t.mask_file("u64.nrrd", labels))


@case("label-1e20", "label value 1e+20, larger than any label map uses", "small label values")
def _(t: Env):
    labels = head_labels().astype(np.float64)
    labels[0, 0, 0] = 1e20
    return t.gen(mask=t.mask_file("big.nrrd", labels))


@case("labels-advice-covers-the-bad-value", "label values [7]", "--labels head=1,tumor=2,background=7")
def _(t: Env):
    labels = head_labels()
    labels[0, 0, 0] = 7
    return t.gen("--labels", "head=1,tumor=2", mask=t.mask_file("seven.nii.gz", labels))


@case("output-png-is-not-a-folder", "'.png' is not an image format", ".nii.gz, .nii, .nrrd, .mha")
def _(t: Env):
    return t.gen(out=t.dir / "synth.png")


@case("margin-nan", "argument --margin: 'nan' is not a finite number", "give a finite value", usage=True)
def _(t: Env):
    return t.gen("--margin", "nan")


@case("tumor-vector-inf", "argument --vector: '1,inf,0' is not a finite number", "finite value", usage=True)
def _(t: Env):
    return ["tumor", "shift", "--mask", t.mask, "--vector=1,inf,0", "-o", t.dir / "moved.nii.gz"]


@case("pickle-torch-prefixed-global", "would run code", "holds only tensors")
def _(t: Env):
    evil = t.dir / "evil.pt"
    # protocol 2: GLOBAL 'torch._C._nn system_evil', called with ('hi',): a name torch's allow-list refuses
    evil.write_bytes(b"\x80\x02ctorch._C._nn\nsystem_evil\nq\x00X\x02\x00\x00\x00hiq\x01\x85q\x02Rq\x03.")
    return t.gen(model=evil)


@case("insert-scan-with-nan", "contains NaN or infinite values", "give a scan with finite intensities")
def _(t: Env):
    scan = np.where(head_labels() > 0, 100.0, 0.0).astype(np.float32)
    scan[5, 5, 5] = np.nan
    sitk.WriteImage(image_from_xyz(scan, origin=(-80, -80, -60)), str(t.dir / "scan.nrrd"))
    tumour = (head_labels() == 2).astype(np.uint8)
    write_mask(t.dir / "tumour.nii.gz", tumour)
    return ["insert", "--scan", t.dir / "scan.nrrd", "--tumor", t.dir / "tumour.nii.gz", "--model", "tiny16",
            "-o", t.dir / "ins", "--device", "cpu", "--quiet"]


@case("dataset-output-name-too-long", "more than the 255 this file system allows", "choose a shorter output name")
def _(t: Env):
    return ["dataset", "--masks", t.masks_folder(), "--model", "tiny16", "-o", t.dir / ("d" * 300), "--quiet"]


@case("dataset-output-png", "'.png' is not an image format", "give a folder name without a file suffix")
def _(t: Env):
    return ["dataset", "--masks", t.masks_folder(), "--model", "tiny16", "-o", t.dir / "dataset.png", "--quiet"]


@case("train-grid-8-gib", "8,589,934,592 voxels", "give a smaller grid")
def _(t: Env):
    (t.dir / "images").mkdir()
    return ["train", "--masks", t.masks_folder(), "--images", t.dir / "images", "-o", t.dir / "run",
            "--grid", "2048,2048,2048", "--quiet"]


@case("models-import-grid-8-gib", "8,589,934,592 voxels", "give a smaller grid")
def _(t: Env):
    return ["models", "import", TINY_CKPT, "--name", "big", "--grid", "2048,2048,2048"]


# ---------------------------------------------------------------------------------------- running


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_refused_cleanly(name, tiny_home, tmp_path, monkeypatch, capsys):
    row = CASES[name]
    home = tmp_path / "home"
    home.mkdir()
    for item in tiny_home.iterdir():  # a private copy: rows may add models or damage the catalogue
        (home / item.name).symlink_to(item) if item.is_dir() else (home / item.name).write_bytes(item.read_bytes())
    monkeypatch.setenv("MEDDDPMSYNTH_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    env = Env(tmp_path, write_mask(tmp_path / "mask.nii.gz"), monkeypatch)
    env.capsys = capsys
    args = row.build(env)
    capsys.readouterr()
    before = snapshot(tmp_path)

    code, out, err = run_cli(args, capsys)
    print(err)

    lines = [line for line in message_lines(err) if not re.match(r"(cases|generating)\b", line)]
    assert_one_clear_refusal(row, code, out, err, lines, r"medddpm-synth [a-z ]*: error: ")
    assert snapshot(tmp_path) == before, "a refused run created or changed files"


def test_the_table_covers_every_category():
    assert len(CASES) >= 30

