"""The bad-input catalogue of ``medddpm-synth generate``: one table, one row per way to get it wrong.

Every row builds its input in ``tmp_path``, runs the real command line in this process and checks the
contract of the issue: the documented exit code (2 bad input/usage, 1 runtime failure), exactly one
``error:`` line that names the problem and the fix, no traceback, and no file created or changed
anywhere in ``tmp_path`` (bytes and mtimes compared). The only mock is the out-of-memory row (and the
full-disk row, which fakes ``shutil.disk_usage``); everything else uses real files.
"""

from __future__ import annotations

import collections
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cli_helpers import (
    TINY_CKPT,
    assert_one_clear_refusal,
    head_labels,
    image_from_xyz,
    message_lines,
    refusal_table,
    run_cli,
    save_random_checkpoint,
    snapshot,
    write_mask,
)
from MedDDPMSynthLib import UNetConfig

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)


@dataclass
class Setup:
    dir: Path  # everything of the row lives here (and is snapshot)
    mask: Path  # a valid whole-head mask (labels 1 head, 2 tumour)
    monkeypatch: pytest.MonkeyPatch
    cleanups: list = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.dir / "out"

    def args(self, mask=None, model="demo", out=None, *extra) -> list:
        return ["generate", "--mask", mask or self.mask, "--model", model, "-o", out or self.out,
                "--device", "cpu", *extra]

    def mask_from(self, name: str, labels_xyz, spacing=(4.0, 4.0, 4.0)) -> Path:
        return write_mask(self.dir / name, labels_xyz, spacing)


CASES, case = refusal_table()  # name -> RefusalRow; @case(name, phrase, fix) registers a row


# ------------------------------------------------------------------------------------ mask files


@case("mask-missing", "does not exist", "check the path")
def _(t: Setup):
    return t.args(mask=t.dir / "nope.nii.gz")


@case("mask-is-a-folder", "is a folder", "give a single")
def _(t: Setup):
    (t.dir / "folder.nii.gz").mkdir()
    return t.args(mask=t.dir / "folder.nii.gz")


@case("mask-empty-file", "could not be read", "give a")
def _(t: Setup):
    (t.dir / "zero.nii.gz").write_bytes(b"")
    return t.args(mask=t.dir / "zero.nii.gz")


@case("mask-corrupt-bytes", "could not be read", "give a")
def _(t: Setup):
    path = t.dir / "corrupt.nii.gz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return t.args(mask=path)


@case("mask-truncated-nifti-gz", "truncated", "export the mask again")
def _(t: Setup):
    # ITK's NIfTI reader silently zero-fills a cut file; the rest of the mask would be lost without a word
    data = t.mask.read_bytes()
    path = t.dir / "half.nii.gz"
    path.write_bytes(data[: int(len(data) * 0.9)])
    return t.args(mask=path)


@case("mask-truncated-nifti", "truncated", "export the mask again")
def _(t: Setup):
    path = t.dir / "half.nii"
    sitk.WriteImage(sitk.ReadImage(str(t.mask)), str(path), useCompression=False)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.9)])
    return t.args(mask=path)


@case("mask-text-file", "could not be read", "give a")
def _(t: Setup):
    path = t.dir / "mask.txt"
    path.write_text("0 1 2\n1 1 2\n")
    return t.args(mask=path)


@case("mask-png-photo", "2-D image", "3-D label volume")
def _(t: Setup):
    path = t.dir / "slice.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.eye(16, dtype=np.uint8)), str(path))
    return t.args(mask=path)


@case("mask-2d-nifti", "2-D image", "3-D label volume")
def _(t: Setup):
    path = t.dir / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(head_labels()[:, :, 15].T.copy()), str(path))
    return t.args(mask=path)


@case("mask-single-slice", "single slice", "3-D label volume")
def _(t: Setup):
    return t.args(mask=t.mask_from("slice.nii.gz", head_labels()[:, :, 15:16]))


@case("mask-4d-series", "series of volumes", "single 3-D label volume")
def _(t: Setup):
    volume = image_from_xyz(head_labels())
    path = t.dir / "series.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(path))
    return t.args(mask=path)


@case("mask-vector-image", "3 values per voxel", "one integer label per voxel")
def _(t: Setup):
    labels = head_labels().transpose(2, 1, 0)
    path = t.dir / "rgb.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([labels] * 3, axis=-1), isVector=True), str(path))
    return t.args(mask=path)


@case("mask-nan", "NaN", "integer label map")
def _(t: Setup):
    labels = head_labels().astype(np.float32)
    labels[3, 3, 3] = np.nan
    return t.args(mask=t.mask_from("nan.nii.gz", labels))


@case("mask-infinite-nrrd", "NaN or infinite", "integer label map")
def _(t: Setup):
    labels = head_labels().astype(np.float64)
    labels[5, 5, 5] = np.inf
    return t.args(mask=t.mask_from("inf.nrrd", labels))


@case("mask-probabilities", "non-integer values", "integer label map")
def _(t: Setup):
    labels = head_labels().astype(np.float32)
    labels[labels == 2] = 0.5
    return t.args(mask=t.mask_from("prob.nii.gz", labels))


@case("mask-negative-label", "negative label -1", "0 (background) or positive")
def _(t: Setup):
    labels = head_labels().astype(np.int16)
    labels[0, 0, 0] = -1
    return t.args(mask=t.mask_from("negative.nii.gz", labels))


@case("mask-huge-volume", "voxels", "crop or downsample")
def _(t: Setup):
    # A MetaImage header claiming 600^3 voxels over a 1 kB data file: must be refused from the header,
    # before anything tries to read (or allocate) 216 M voxels.
    (t.dir / "huge.raw").write_bytes(bytes(1000))
    path = t.dir / "huge.mhd"
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 600 600 600\nElementSpacing = 1 1 1\n"
                    "ElementType = MET_UCHAR\nElementDataFile = huge.raw\n")
    return t.args(mask=path)


# --------------------------------------------------------------------------------- mask contents


@case("mask-empty", "empty", "paint")
def _(t: Setup):
    return t.args(mask=t.mask_from("empty.nii.gz", np.zeros((40, 40, 30), np.uint8)))


@case("mask-only-tumour", "no head voxels", "--labels head=VALUE")
def _(t: Setup):
    labels = head_labels()
    labels[labels == 1] = 0
    return t.args(mask=t.mask_from("tumour_only.nii.gz", labels))


@case("mask-tumour-outside-head", "outside the head", "move the tumour inside")
def _(t: Setup):
    labels = head_labels()
    labels[0:3, 0:3, 0:3] = 2  # a stray blob in the corner, not touching the head
    return t.args(mask=t.mask_from("stray.nii.gz", labels))


@case("mask-unknown-label", "label values [7]", "--labels")
def _(t: Setup):
    labels = head_labels()
    labels[20:23, 20:23, 5:8] = 7
    return t.args(mask=t.mask_from("seven.nii.gz", labels))


@case("mask-tumour-outside-field-of-view", "outside the model's", "crop the mask to the head")
def _(t: Setup):
    # the head is centred on the (8 x 6 mm = 48 mm) grid; a tumour 60 mm off-centre cannot be on it
    labels = head_labels(tumour_centre=(0.5 + 60 / 156, 0.5, 0.5), tumour_radius_mm=8)
    return t.args(t.mask_from("far.nii.gz", labels), "demo", None, "--grid", "8,8,8")


@case("mask-tumour-below-model-resolution", "smaller than one model voxel", "larger tumour")
def _(t: Setup):
    labels = head_labels(size=(80, 80, 60), spacing=(2.0, 2.0, 2.0), tumour=None)
    labels[41, 40, 31] = 2  # one 2 mm voxel; the model's voxels are 6 mm
    return t.args(mask=t.mask_from("speck.nii.gz", labels, spacing=(2.0, 2.0, 2.0)))


# ------------------------------------------------------------------------------------- --labels


@case("labels-malformed", "cannot read 'head:1'", "NAME=VALUE")
def _(t: Setup):
    return t.args(None, "demo", None, "--labels", "head:1,tumor=2")


@case("labels-unknown-tissue", "unknown tissue name 'skull'", "head=VALUE")
def _(t: Setup):
    return t.args(None, "demo", None, "--labels", "skull=1,tumor=2")


@case("labels-value-twice", "one label value to two tissues", "each value to one tissue")
def _(t: Setup):
    return t.args(None, "demo", None, "--labels", "head=1,tumor=1")


@case("labels-tissue-missing", "does not say which value is tumor", "tumor=2")
def _(t: Setup):
    return t.args(None, "demo", None, "--labels", "head=1")


# ---------------------------------------------------------------------------------------- models


@case("model-path-missing", "neither a model file nor the name", "models import")
def _(t: Setup):
    return t.args(model=t.dir / "missing.pt")


@case("model-unknown-name", "neither a model file nor the name", "models list")
def _(t: Setup):
    return t.args(model="no_such_model")


@case("model-is-a-folder", "folder", "give the path of the .pt")
def _(t: Setup):
    (t.dir / "weights.pt").mkdir()
    return t.args(model=t.dir / "weights.pt")


@case("model-empty-file", "is empty", "download or copy it again")
def _(t: Setup):
    (t.dir / "empty.pt").write_bytes(b"")
    return t.args(model=t.dir / "empty.pt")


@case("model-text-file", "not a PyTorch checkpoint", "Med-DDPM .pt file")
def _(t: Setup):
    (t.dir / "notes.pt").write_text("these are not weights\n")
    return t.args(model=t.dir / "notes.pt")


class _RunsCode:
    """Unpickling this would run ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@case("model-pickle-runs-code-zip", "would run code", "holds only tensors")
def _(t: Setup):
    torch.save({"step": 1, "ema": _RunsCode(t.dir / "PWNED")}, t.dir / "evil.pt")
    return t.args(model=t.dir / "evil.pt")


@case("model-pickle-runs-code-legacy", "would run code", "holds only tensors")
def _(t: Setup):
    (t.dir / "evil_legacy.pt").write_bytes(pickle.dumps(_RunsCode(t.dir / "PWNED"), protocol=2))
    return t.args(model=t.dir / "evil_legacy.pt")


@case("model-truncated", "truncated or corrupt", "download or copy it again")
def _(t: Setup):
    data = TINY_CKPT.read_bytes()
    (t.dir / "cut.pt").write_bytes(data[: int(len(data) * 0.6)])
    return t.args(model=t.dir / "cut.pt")


@case("model-wrong-family", "matches no Med-DDPM family", "whole-head or BraTS")
def _(t: Setup):
    save_random_checkpoint(t.dir / "five.pt", UNetConfig(5, 1, 32, (1, 1), 1, ()), 2)
    return t.args(model=t.dir / "five.pt")


@case("model-foreign-state-dict", "not a Med-DDPM diffusion checkpoint", "model_128.pt")
def _(t: Setup):
    torch.save({"conv.weight": torch.zeros(4, 4), "fc.bias": torch.zeros(4)}, t.dir / "resnet.pt")
    return t.args(model=t.dir / "resnet.pt")


@case("model-nan-weights", "NaN/Inf", "damaged")
def _(t: Setup):
    raw = torch.load(TINY_CKPT, map_location="cpu", weights_only=True)
    raw["ema"]["denoise_fn.out.2.weight"][0] = float("nan")
    torch.save(raw, t.dir / "nan.pt")
    return t.args(model=t.dir / "nan.pt")


@case("model-catalogue-damaged", "catalogue", "delete it and import")
def _(t: Setup):
    home = Path(os.environ["MEDDDPMSYNTH_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "models.json").write_text("{ not json")
    return t.args(model="wholehead")


# --------------------------------------------------------------------------------------- outputs


@case("output-file-exists", "already exists", "--overwrite")
def _(t: Setup):
    (t.dir / "synth.nii.gz").write_bytes(b"precious")
    return t.args(out=t.dir / "synth.nii.gz")


@case("output-folder-files-exist", "already exists", "--overwrite")
def _(t: Setup):
    t.out.mkdir()
    (t.out / "provenance.json").write_text("{}\n")
    (t.out / "mask_s00_t1c.nii.gz").write_bytes(b"precious")
    return t.args()


@case("output-parent-is-a-file", "is a file", "choose another output")
def _(t: Setup):
    # tests run as root, which ignores folder permissions: a parent that is a file cannot be written by anyone
    (t.dir / "notes.txt").write_text("a file, not a folder\n")
    return t.args(out=t.dir / "notes.txt" / "out")


@case("output-file-parent-is-a-file", "is a file", "choose another output")
def _(t: Setup):
    (t.dir / "notes.txt").write_text("a file, not a folder\n")
    return t.args(out=t.dir / "notes.txt" / "synth.nii.gz")


@case("output-read-only-folder", "no permission", "choose another output folder")
def _(t: Setup):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions; output-parent-is-a-file covers an unwritable output")
    locked = t.dir / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    t.cleanups.append(lambda: locked.chmod(0o700))
    return t.args(out=locked / "out")


@case("output-is-the-mask", "overwrite the input mask", "choose another output")
def _(t: Setup):
    return t.args(out=t.mask)


@case("output-no-disk-space", "not enough disk space", "free some space")
def _(t: Setup):
    usage = collections.namedtuple("usage", "total used free")
    t.monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12, 0))
    return t.args()


@case("samples-with-one-file-output", "names one image file but --samples is 2", "give a folder")
def _(t: Setup):
    return t.args(None, "demo", t.dir / "synth.nii.gz", "--samples", "2")


# ----------------------------------------------------------------------------- numbers and flags


@case("samples-zero", "--samples and --batch", "at least 1")
def _(t: Setup):
    return t.args(None, "demo", None, "--samples", "0")


@case("batch-zero", "--samples and --batch", "at least 1")
def _(t: Setup):
    return t.args(None, "demo", None, "--batch", "0")


@case("grid-not-divisible", "multiples of 2", "--grid")
def _(t: Setup):
    return t.args(None, "demo", None, "--grid", "31,32,32")


@case("grid-zero", "positive multiples", "--grid")
def _(t: Setup):
    return t.args(None, "demo", None, "--grid", "0,32,32")


@case("grid-malformed", "is not X,Y,Z", "three integers", usage=True)
def _(t: Setup):
    return t.args(None, "demo", None, "--grid", "32,32")


@case("steps-with-ddpm", "always runs all 10 steps", "--sampler ddim")
def _(t: Setup):
    return t.args(None, "demo", None, "--sampler", "ddpm", "--steps", "5")  # --steps alone shortens the preset


@case("sampler-unknown", "invalid choice: 'euler'", "choose from", usage=True)
def _(t: Setup):
    return t.args(None, "demo", None, "--sampler", "euler")


@case("option-unknown", "unrecognized arguments: --colour", "", usage=True)
def _(t: Setup):
    return t.args(None, "demo", None, "--colour")


@case("device-cuda-missing", "no CUDA GPU", "--device cpu")
def _(t: Setup):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is available here")
    return [*t.args(), "--device", "cuda"]


# ---------------------------------------------------------------------------------- runtime failure


@case("out-of-memory", "out of CPU memory", "--batch 1 or --precision bf16", code=1)
def _(t: Setup):
    from MedDDPMSynthLib.model import api

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    t.monkeypatch.setattr(api, "run_sampler", no_memory)  # mocked allocation failure, the only mock
    return t.args()


def test_the_catalogue_has_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_cleanly(name, tmp_path, monkeypatch, capsys):
    row = CASES[name]
    monkeypatch.setenv("MEDDDPMSYNTH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    setup = Setup(tmp_path, write_mask(tmp_path / "mask.nii.gz"), monkeypatch)
    args = row.build(setup)
    output = Path(args[args.index("-o") + 1])
    existed = output.exists()
    before = snapshot(tmp_path)

    code, out, err = run_cli(args, capsys)
    for cleanup in setup.cleanups:
        cleanup()
    print(err)

    assert "generating:" not in err, "a refused run must not show a progress bar"
    # argparse errors: "usage: ..." then "medddpm-synth generate: error: ..."
    assert_one_clear_refusal(row, code, out, err, message_lines(err), r"medddpm-synth( generate)?: error: ")
    assert snapshot(tmp_path) == before, "a refused run created or changed files"
    assert output.exists() == existed
    assert not (tmp_path / "PWNED").exists(), "the checkpoint's code ran"
