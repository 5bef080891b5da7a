"""Training: data pairs on the model grid, normalisation, loss going down, EMA, official checkpoints,
bit-identical resume, the ``train`` command line and 2-process DDP on the CPU (all small and fast)."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedDDPMSynthLib import BRATS, WHOLE_HEAD, load_model
from MedDDPMSynthLib.cli.commands import main
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.normalisation import normalise_per_slice, normalise_per_volume
from MedDDPMSynthLib.data.train_data import PairedVolumeDataset
from MedDDPMSynthLib.training.train_config import TrainConfig
from MedDDPMSynthLib.training.train_state import sidecar_path
from MedDDPMSynthLib.training.trainer import MAX_WEIGHT, Trainer, _Objective, loss_weights

GRID, SPACING = (16, 16, 16), (3.0, 3.0, 3.0)
LPS = (1, 0, 0, 0, 1, 0, 0, 0, 1)
RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
TILTED = (0, 1, 0, -1, 0, 0, 0, 0, 1)  # axes swapped: checks that geometry, not index order, pairs voxels
TINY_ARCH = dict(model_channels=32, channel_mult=(1, 1), attention_ds=(), timesteps=20)


# --------------------------------------------------------------------------------------- tiny data


def _grid_image(array_zyx: np.ndarray, spacing, direction, centre=(0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    size = np.array(image.GetSize(), float)
    matrix = np.array(direction, float).reshape(3, 3)
    image.SetSpacing(spacing)
    image.SetDirection([float(v) for v in direction])
    image.SetOrigin((np.asarray(centre) - matrix @ (np.asarray(spacing) * (size - 1) / 2)).tolist())
    return image


def _points(size, spacing, direction) -> np.ndarray:
    """Physical coordinates (Z, Y, X, 3) of the voxel centres of a grid centred on the origin."""
    ref = _grid_image(np.zeros(size[::-1], np.uint8), spacing, direction)
    k, j, i = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    index = np.stack([i, j, k], -1).astype(float)
    matrix = np.array(ref.GetDirection()).reshape(3, 3)
    return np.asarray(ref.GetOrigin()) + (index * np.asarray(ref.GetSpacing())) @ matrix.T


def _anatomy(points: np.ndarray, tumour_centre) -> tuple[np.ndarray, np.ndarray]:
    head = (((points / np.array([18.0, 16.0, 14.0])) ** 2).sum(-1) <= 1)
    tumour = np.linalg.norm(points - np.asarray(tumour_centre), axis=-1) <= 6.0
    return head, tumour & head


def _case(n: int, direction, image_grid=None, seed=0):
    """(mask, image) of case n: head label 1, tumour 2 (off-centre), image brighter in the tumour."""
    rng = np.random.default_rng(seed + n)
    centre = (5.0 + n, -4.0, 3.0 - n)
    head, tumour = _anatomy(_points((24, 24, 24), (2.0,) * 3, direction), centre)
    mask = _grid_image((head.astype(np.uint8) + tumour).astype(np.uint8), (2.0,) * 3, direction)
    size, spacing, idirection = image_grid or ((24, 24, 24), (2.0,) * 3, direction)
    points = _points(size, spacing, idirection)
    head_i, tumour_i = _anatomy(points, centre)
    values = 40.0 * head_i + 60.0 * tumour_i + 5.0 * points[..., 2] / 20 + rng.normal(0, 1.0, head_i.shape)
    return mask, _grid_image(values.astype(np.float32), spacing, idirection)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine oversubscribed threads make CPU training ~5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pairs")
    masks, images = root / "masks", root / "images"
    masks.mkdir(), images.mkdir()
    cases = [(LPS, None, ".nii.gz"), (RAS, None, ".nrrd"), (TILTED, None, ".mha"),
             (RAS, ((32, 32, 32), (1.5,) * 3, LPS), ".nii.gz")]  # last: image on another grid
    for n, (direction, image_grid, ext) in enumerate(cases):
        mask, image = _case(n, direction, image_grid)
        sitk.WriteImage(mask, str(masks / f"case{n}_seg{ext}"))
        sitk.WriteImage(image, str(images / f"case{n}{'.nii.gz' if n % 2 else ext}"))
    return masks, images


@pytest.fixture(scope="module")
def dataset(data_dirs) -> PairedVolumeDataset:
    return PairedVolumeDataset(*data_dirs, WHOLE_HEAD, GRID, SPACING, normalisation="official")


def _config(**changes) -> TrainConfig:
    values = dict(family="whole_head", grid_xyz=GRID, spacing_mm=SPACING, lr=1e-3, grad_accum=1, seed=3, **TINY_ARCH)
    return TrainConfig(**{**values, **changes})


# ---------------------------------------------------------------------------------- data + layout


def test_per_slice_normalisation_matches_minmax_scaler_reference():
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 30, (3, 4, 5))
    volume[:, :, 2] = 7.0  # a constant slice -> 0 -> -1
    columns = volume.reshape(3 * 4, 5)  # (X*Y, Z), as the official MinMaxScaler sees it
    span = columns.max(0) - columns.min(0)
    unit = (columns - columns.min(0)) / np.where(span == 0, 1, span)
    expected = (2 * unit - 1).reshape(3, 4, 5)
    np.testing.assert_allclose(normalise_per_slice(volume), expected, atol=1e-6)
    assert (normalise_per_slice(volume)[:, :, 2] == -1).all()


def test_per_volume_normalisation():
    volume = np.arange(24, dtype=float).reshape(2, 3, 4) * 3 + 10
    np.testing.assert_allclose(normalise_per_volume(volume), (volume - 10) / 69 * 2 - 1, atol=1e-6)
    assert (normalise_per_volume(np.full((2, 2, 2), 5.0)) == -1).all()


def test_items_are_in_model_layout_and_overlay_the_labels(dataset):
    assert len(dataset) == 4
    for index in range(len(dataset)):
        image, cond = dataset[index]
        assert image.shape == (1, 16, 16, 16) and cond.shape == (2, 16, 16, 16)
        assert image.dtype == cond.dtype == torch.float32
        assert set(cond.unique().tolist()) == {-1.0, 1.0}
        # per slice along D (= Z) every slice spans [-1, 1] or is constant -1
        per_slice_max = image[0].amax(dim=(1, 2))
        assert image.min() == -1 and ((per_slice_max == 1) | (per_slice_max == -1)).all()
        tumour, head = cond[1] > 0, cond[0] > 0
        background = ~(tumour | head)
        assert image[0][tumour].mean() > image[0][head].mean() + 0.3 > image[0][background].mean() + 0.6
        # the same condition as inference builds for these labels (the dataset used Family's layout)
        swapped = image[0].transpose(0, 2)  # a wrong D<->W layout would not overlay the tumour
        assert image[0][tumour].mean() > swapped[tumour].mean()


def test_brats_pairs_stack_four_modalities_in_order(tmp_path):
    masks, images = tmp_path / "seg", tmp_path / "img"
    masks.mkdir(), images.mkdir()
    mask, image = _case(0, LPS)
    labels = sitk.GetArrayFromImage(mask)
    brats = np.select([labels == 2, labels == 1], [3, 4], 0).astype(np.uint8)  # enhancing in brain
    seg = sitk.GetImageFromArray(brats)
    seg.CopyInformation(mask)
    sitk.WriteImage(seg, str(masks / "BraTS_001_seg.nii.gz"))
    base = sitk.GetArrayFromImage(image)
    for offset, name in zip((30, 60, -90, -120), BRATS.modalities):  # flair and t2 darker in the tumour
        modality = sitk.GetImageFromArray((base + offset * (labels == 2)).astype(np.float32))
        modality.CopyInformation(image)
        sitk.WriteImage(modality, str(images / f"BraTS_001_{name}.nii.gz"))
    item_image, cond = PairedVolumeDataset(masks, images, BRATS, GRID, SPACING, normalisation="official")[0]
    assert item_image.shape == (4, 16, 16, 16) and cond.shape == (4, 16, 16, 16)
    assert set(cond.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(item_image.amin(dim=(1, 2, 3)), -torch.ones(4)) and torch.equal(item_image.amax(dim=(1, 2, 3)), torch.ones(4))
    tumour, brain = cond[2] > 0, cond[3] > 0
    contrast = [float(item_image[c][tumour].mean() - item_image[c][brain].mean()) for c in range(4)]
    assert contrast[0] > 0 and contrast[1] > 0 and contrast[2] < 0 and contrast[3] < 0


def test_augment_hook_gets_image_and_labels_before_resampling(data_dirs):
    calls = []

    def mirror(image, labels):
        calls.append((image.GetSize(), labels.GetSize()))
        mirrored = []  # a physical left-right mirror: the voxels move, the grid stays
        for volume in (image, labels):
            flipped = sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayFromImage(volume)[:, :, ::-1]))
            flipped.CopyInformation(volume)
            mirrored.append(flipped)
        return tuple(mirrored)

    augmented = PairedVolumeDataset(*data_dirs, WHOLE_HEAD, GRID, SPACING, augment=mirror, normalisation="official")
    image, cond = augmented[0]
    augmented[0]
    assert calls == [((24, 24, 24), (24, 24, 24))] * 2  # every access, on the file's own grid
    assert image[0][cond[1] > 0].mean() > image[0][cond[0] > 0].mean() + 0.3  # still paired
    assert not torch.equal(cond, PairedVolumeDataset(*data_dirs, WHOLE_HEAD, GRID, SPACING, normalisation="official")[0][1])


def test_bad_folders_are_input_errors(tmp_path, data_dirs):
    masks, images = data_dirs
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no mask files"):
        PairedVolumeDataset(tmp_path / "empty", images, WHOLE_HEAD)
    with pytest.raises(InputError, match="does not exist"):
        PairedVolumeDataset(tmp_path / "missing", images, WHOLE_HEAD)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    sitk.WriteImage(_case(0, LPS)[0], str(lonely / "nobody.nii.gz"))
    with pytest.raises(InputError, match="no image for mask nobody.nii.gz"):
        PairedVolumeDataset(lonely, images, WHOLE_HEAD)
    with pytest.raises(InputError, match="could not be read"):
        PairedVolumeDataset(lonely, _images_for(tmp_path, "nobody", b"not an image"), WHOLE_HEAD)[0]
    shifted = _images_for(tmp_path, "nobody")
    moved = _case(0, LPS)[1]
    moved.SetOrigin([v + 200 for v in moved.GetOrigin()])
    sitk.WriteImage(moved, str(shifted / "nobody.nii.gz"))
    with pytest.raises(InputError, match="does not cover mask"):
        PairedVolumeDataset(lonely, shifted, WHOLE_HEAD)[0]


def _images_for(tmp_path: Path, stem: str, content: bytes | None = None) -> Path:
    folder = tmp_path / f"images_{stem}_{content is not None}"
    folder.mkdir(exist_ok=True)
    if content is not None:
        (folder / f"{stem}.nii.gz").write_bytes(content)
    return folder


# ---------------------------------------------------------------------------------------- training


def test_a_few_steps_lower_the_loss(dataset):
    trainer = Trainer(_config(steps=30), dataset, quiet=True)
    losses = trainer.train()
    assert len(losses) == 30 and trainer.step == 30 and trainer.history == losses
    first, last = np.mean(losses[:6]), np.mean(losses[-6:])  # about 0.73 -> 0.30
    assert last < 0.8 * first, (first, last)


def test_truncated_snr_weighting_draws_noise_levels_by_weight(dataset):
    trainer = Trainer(_config(weighting="truncated-snr"), dataset, quiet=True)
    diffusion = trainer.model
    abar = diffusion.alphas_cumprod.double()
    snr = abar / (1 - abar)
    weights = loss_weights(diffusion.alphas_cumprod, "l1")
    assert torch.all(weights[1:] >= weights[:-1]) and weights[0] == 1 and weights[-1] == MAX_WEIGHT
    middle = (snr < 1) & (snr > MAX_WEIGHT ** -2)  # neither floor nor cap: the x0-error scale 1/sqrt(SNR)
    assert middle.any()
    torch.testing.assert_close(weights[middle].double(), snr[middle].rsqrt(), rtol=1e-6, atol=0)
    torch.testing.assert_close(loss_weights(diffusion.alphas_cumprod, "l2"), weights ** 2)

    # importance sampling: t comes up in proportion to its weight ...
    counts = torch.bincount(trainer.draw_timesteps(40000), minlength=diffusion.num_timesteps).double()
    expected = 40000 * weights.double() / weights.sum()
    assert torch.all((counts - expected).abs() < 5 * expected.sqrt() + 5), (counts, expected)
    uniform = Trainer(_config(), dataset, quiet=True).draw_timesteps(40000)
    assert torch.bincount(uniform).double().std() < 0.05 * 2000  # ... and uniformly without weighting
    # ... and the loss is scaled by the mean weight, so the expected objective is that of the weighted loss
    image, cond = (v[None] for v in dataset[0])
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t = torch.tensor([12])
        plain = _Objective(diffusion, "l1")(image, cond, t, noise)
        torch.testing.assert_close(trainer.net(image, cond, t, noise), plain * weights.mean())
    with pytest.raises(InputError, match="unknown weighting 'snr'"):
        _config(weighting="snr").check()


def test_ema_copies_then_averages_parameters(dataset):
    trainer = Trainer(_config(ema_start=2, ema_every=1, ema_decay=0.9), dataset, quiet=True)
    batches = iter(trainer._loader())
    trainer.train_step(batches)  # step 1 < ema_start: a copy
    for a, b in zip(trainer.ema.state_dict().values(), trainer.model.state_dict().values()):
        assert torch.equal(a, b)
    before = [p.detach().clone() for p in trainer.ema.parameters()]
    trainer.train_step(batches)  # step 2: decay * ema + (1 - decay) * model
    for old, ema_p, p in zip(before, trainer.ema.parameters(), trainer.model.parameters()):
        torch.testing.assert_close(ema_p, 0.9 * old + 0.1 * p, rtol=0, atol=1e-6)
    assert any(not torch.equal(e, p) for e, p in zip(trainer.ema.parameters(), trainer.model.parameters()))
    for ema_b, b in zip(trainer.ema.buffers(), trainer.model.buffers()):
        assert torch.equal(ema_b, b)


def test_checkpoint_is_official_and_loads_for_generation(dataset, tmp_path):
    # the official options give exactly the official format; others add one entry that loaders ignore
    trainer = Trainer(_config(steps=2, ema_start=0, ema_every=1, normalisation="official"), dataset, quiet=True)
    trainer.train()
    path = tmp_path / "model-2.pt"
    trainer.save(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert list(raw) == ["step", "model", "ema"] and raw["step"] == 2
    Trainer(_config(steps=2, prediction="v"), dataset, quiet=True).save(tmp_path / "v.pt")
    assert torch.load(tmp_path / "v.pt", weights_only=True)["medddpm_options"] == {
        "prediction": "v", "normalisation": "robust-volume"}
    assert list(raw["model"]) == list(raw["ema"]) == list(trainer.model.state_dict())
    model = load_model(path, device="cpu", grid_xyz=GRID, spacing_mm=SPACING)
    assert model.diffusion.config == trainer.config.unet() and model.timesteps == 20
    assert model.family is WHOLE_HEAD and model.info.step == 2
    for key, value in trainer.ema.state_dict().items():
        assert torch.equal(model.diffusion.state_dict()[key], value)
    labels = np.zeros(GRID, np.int64)
    labels[2:14, 2:14, 2:14], labels[6:9, 6:9, 6:9] = 1, 2
    images = model.generate(labels, seed=1)
    assert images.shape == (1, 1, 16, 16, 16) and np.isfinite(images).all()
    assert torch.load(sidecar_path(path), map_location="cpu", weights_only=True)["step"] == 2


def test_resume_is_bit_identical(dataset, tmp_path):
    config = _config(steps=6, grad_accum=2, ema_start=4, ema_every=2, lr=1e-4)
    straight = Trainer(config, dataset, quiet=True)
    straight.train()
    first = Trainer(config, dataset, quiet=True)
    first.train(until=3)
    first.save(tmp_path / "model-3.pt")
    resumed = Trainer(config, dataset, quiet=True)
    assert resumed.resume(tmp_path / "model-3.pt") == []
    resumed.train()
    assert resumed.step == straight.step == 6 and resumed.samples_seen == straight.samples_seen
    for name in ("model", "ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed.history == straight.history[3:]

    # a new learning rate on resume is used, not the one inside the saved optimiser state
    slower = Trainer(_config(steps=6, grad_accum=2, ema_start=4, ema_every=2, lr=1e-5), dataset, quiet=True)
    slower.resume(tmp_path / "model-3.pt")
    assert [g["lr"] for g in slower.optimizer.param_groups] == [1e-5]
    before = [p.detach().clone() for p in slower.model.parameters()]
    slower.train(until=4)
    largest = max(float((p.detach() - b).abs().max()) for p, b in zip(slower.model.parameters(), before))
    assert 0 < largest <= 1.01e-5  # Adam moves a weight by at most about lr per step


# --------------------------------------------------------------------------------------------- CLI


def _argv(masks, images, out, *extra) -> list[str]:
    return ["train", "--masks", str(masks), "--images", str(images), "-o", str(out), "--grid", "16,16,16",
            "--spacing", "3,3,3", "--mult", "1,1", "--attention", "", "--timesteps", "20", "--accum", "1",
            "--lr", "1e-3", "--quiet", *extra]


def test_cli_trains_writes_and_refuses(data_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(*data_dirs, out, "--steps", "3", "--save-every", "2")) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model-2.pt", "model-3.pt", "model-last.pt", "model-last.pt.train-state.pt", "model-3.pt.train-state.pt",
            "train_log.csv", "train_log.jsonl", "config.json"} <= names
    assert not [n for n in names if n.endswith(".part")]
    with open(out / "train_log.csv") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [1, 2, 3]
    assert torch.load(out / "model-last.pt", weights_only=True)["step"] == 3
    # a new run normalises robust-volume and records its data's healthy-tissue landmarks for insertion: the
    # bright tumours held the top of each image's range, so the healthy tissue stops below +1
    landmarks = PairedVolumeDataset(*data_dirs, WHOLE_HEAD, (16, 16, 16), (3, 3, 3)).healthy_landmarks()
    (median, high), = landmarks
    assert -1 < median < high < 0.9
    assert load_model(out / "model-last.pt").options.healthy_landmarks[0] == pytest.approx((median, high), abs=1e-4)
    assert json.loads((out / "config.json").read_text())["config"]["healthy_landmarks"][0] == pytest.approx([median, high])

    assert main(_argv(*data_dirs, out, "--steps", "3")) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(_argv(*data_dirs, out, "--resume", "--steps", "5")) == 0
    with open(out / "train_log.csv") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [1, 2, 3, 4, 5]
    # resuming from an earlier checkpoint drops the rows logged after it (they are logged again)
    assert main(_argv(*data_dirs, out, "--resume", str(out / "model-3.pt"), "--steps", "6")) == 0
    with open(out / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(r["seconds"]) for r in rows] == sorted(float(r["seconds"]) for r in rows)  # time goes on
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    assert main(_argv(*data_dirs, out, "--resume", "--steps", "6", "--channels", "64")) == 2
    assert "drop the conflicting options" in capsys.readouterr().err
    assert main(_argv(tmp_path / "nowhere", data_dirs[1], tmp_path / "run2", "--steps", "1")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_ctrl_c_keeps_the_last_complete_checkpoint(data_dirs, tmp_path, monkeypatch, capsys):
    original = Trainer.train_step

    def interrupted(self, batches):
        if self.step == 2:
            raise KeyboardInterrupt
        return original(self, batches)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    out = tmp_path / "run"
    assert main(_argv(*data_dirs, out, "--steps", "5", "--save-every", "1")) == 130
    assert "cancelled at step 2" in capsys.readouterr().err
    assert torch.load(out / "model-last.pt", weights_only=True)["step"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".part")]


def test_fine_tunes_an_official_checkpoint_without_sidecar(data_dirs, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "tuned"
    argv = ["train", "--masks", str(data_dirs[0]), "--images", str(data_dirs[1]), "-o", str(out), "--grid", "16,16,16",
            "--spacing", "3,3,3", "--accum", "1", "--quiet", "--resume", str(tiny_ckpt), "--steps", "4001"]
    assert main(argv) == 0
    assert "no .train-state.pt" in capsys.readouterr().err
    model = load_model(out / "model-last.pt")
    assert model.info.step == 4001 and model.diffusion.config.attention_ds == (2,) and model.timesteps == 10
    assert model.options.normalisation == "official" and model.options.healthy_landmarks is None


def test_bf16_autocast_trains(dataset):
    trainer = Trainer(_config(steps=2, precision="bf16"), dataset, quiet=True)
    losses = trainer.train()
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert next(trainer.model.parameters()).dtype == torch.float32  # master weights stay fp32


# --------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, port: int, masks: str, images: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dataset = PairedVolumeDataset(masks, images, WHOLE_HEAD, GRID, SPACING)
    trainer = Trainer(_config(steps=2), dataset, device="cpu", quiet=True)
    try:
        assert trainer.dist.world == world and trainer.dist.rank == rank
        trainer.train()
        trainer.save(Path(out) / "model-2.pt")  # collective; rank 0 writes
        torch.save(trainer.model.state_dict(), Path(out) / f"rank{rank}.pt")
    finally:
        trainer.close()


def test_two_process_ddp_gives_identical_weights(data_dirs, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, *map(str, data_dirs), str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = torch.load(tmp_path / "model-2.pt", weights_only=True)
    assert saved["step"] == 2 and all(torch.equal(saved["model"][k], a[k]) for k in a)
    state = torch.load(sidecar_path(tmp_path / "model-2.pt"), weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]["noise"]) == 2
