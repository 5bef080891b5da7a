"""Checkpoint reading: any official-format configuration, every container, and clear refusals."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from MedDDPMSynthLib import (
    CheckpointError,
    GaussianDiffusion,
    UNetConfig,
    load_model,
    read_state_dict,
    save_official_checkpoint,
    save_safetensors,
)

CONFIGS = [
    # whole-head layout, 3 levels, 2 res-blocks, attention at full and half resolution, T = 7
    (UNetConfig(3, 1, 32, (1, 2, 2), 2, (1, 2)), 7, (16, 16, 8)),
    # BraTS layout (8 in / 4 out), attention only in the middle, T = 5
    (UNetConfig(8, 4, 32, (1, 1), 1, ()), 5, (8, 16, 16)),
]


def _random_model(config: UNetConfig, timesteps: int, seed: int) -> GaussianDiffusion:
    torch.manual_seed(seed)
    model = GaussianDiffusion(config, timesteps)
    with torch.no_grad():  # the official constructor zero-initialises output convs; make outputs non-trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("config,timesteps,grid", CONFIGS)
def test_any_configuration_round_trips_through_official_format(tmp_path, config, timesteps, grid):
    ema, raw = _random_model(config, timesteps, 1), _random_model(config, timesteps, 2)
    path = tmp_path / "model.pt"
    save_official_checkpoint(path, raw.state_dict(), ema.state_dict(), step=123)
    assert list(torch.load(path, weights_only=True)) == ["step", "model", "ema"]

    model = load_model(path)
    assert model.diffusion.config == config and model.timesteps == timesteps
    assert model.info.step == 123 and model.info.weights_key == "ema"
    labels = np.zeros(grid, dtype=np.uint8)
    labels[2:-2, 2:-2, 1:-1] = 4 if config.out_channels == 4 else 1
    images = model.generate(labels, seed=5)
    # reference: the same weights driven by hand with the official RNG protocol
    torch.manual_seed(5)
    shape = (1, config.out_channels, grid[2], grid[1], grid[0])
    x = torch.randn(shape)
    cond = model.family.condition_from_labels(labels)
    from MedDDPMSynthLib.model.sampling import ddpm_step

    for t in reversed(range(timesteps)):
        x = ddpm_step(ema, x, cond, t, torch.randn(shape))
    assert np.array_equal(images[0], model.family.images_to_xyz(x)[0])


def test_safetensors_fp16_and_bare_state_dict(tmp_path):
    config, timesteps, grid = CONFIGS[0]
    ema = _random_model(config, timesteps, 3)
    st = tmp_path / "m.safetensors"
    save_safetensors(st, ema.state_dict(), {"grid_xyz": "16,16,8", "spacing_mm": "3,3,3"}, dtype=torch.float16)
    loaded = load_model(st)
    assert loaded.info.container == "safetensors" and loaded.grid_xyz == (16, 16, 8)
    assert loaded.spacing_mm == (3.0, 3.0, 3.0)
    # fp16 storage rounds weights (not the schedule buffers, which stay exact)
    for k, v in ema.state_dict().items():
        tol = 0 if k in ("betas", "alphas_cumprod") else 1e-3
        torch.testing.assert_close(loaded.diffusion.state_dict()[k], v, atol=tol, rtol=tol)
    bare = tmp_path / "bare.pt"
    torch.save(ema.state_dict(), bare)
    assert read_state_dict(bare)[1].container == "state_dict"
    prefixed = tmp_path / "ddp.pt"  # saved from a DataParallel wrapper
    torch.save({"ema": OrderedDict(("module." + k, v) for k, v in ema.state_dict().items())}, prefixed)
    assert load_model(prefixed).diffusion.config == config


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_files(tmp_path, tiny_ckpt):
    data = tiny_ckpt.read_bytes()
    state = torch.load(tiny_ckpt, weights_only=True)["ema"]
    cases = {}

    def write(name, payload):
        path = tmp_path / name
        if isinstance(payload, bytes):
            path.write_bytes(payload)
        else:
            torch.save(payload, path)
        return path

    cases["missing file"] = (tmp_path / "nope.pt", "not found")
    cases["a folder"] = (tmp_path, "is a folder")
    cases["empty file"] = (write("empty.pt", b""), "is empty")
    cases["text file"] = (write("notes.pt", b"hello, this is not a model\n"), "not a PyTorch checkpoint")
    cases["truncated"] = (write("trunc.pt", data[: len(data) // 2]), "truncated or corrupt")
    cases["bit rot in header"] = (write("rot.pt", data[:4] + b"\0" * 64 + data[68:]), "truncated or corrupt")
    exploit = _Exploit()
    exploit.marker = tmp_path / "pwned"
    cases["code-running pickle"] = (write("evil.pt", pickle.dumps({"ema": exploit})), "would run code")
    cases["tensor, not dict"] = (write("tensor.pt", torch.zeros(3)), "not a state dict")
    cases["no ema key"] = (write("other.pt", {"step": 1, "optimizer": {"lr": 1.0}}), "no 'ema' weights")
    cases["foreign model"] = (write("resnet.pt", {"conv1.weight": torch.zeros(8, 3, 7, 7)}), "not a Med-DDPM")
    no_buffers = OrderedDict((k, v) for k, v in state.items() if k.startswith("denoise_fn."))
    cases["no schedule buffers"] = (write("nobuf.pt", {"ema": no_buffers}), "schedule buffers")
    missing = OrderedDict((k, v) for k, v in state.items() if "out_layers.3" not in k)
    cases["missing weights"] = (write("missing.pt", {"ema": missing}), "not a( complete)? Med-DDPM U-Net|does not match")
    wrong = OrderedDict(state)
    wrong["denoise_fn.out.2.bias"] = torch.zeros(5)
    cases["wrong shape"] = (write("wrong.pt", {"ema": wrong}), "wrong shapes")
    extra = OrderedDict(state)
    extra["denoise_fn.label_emb.weight"] = torch.zeros(3, 128)
    cases["unexpected key"] = (write("extra.pt", {"ema": extra}), "unexpected")
    nan = OrderedDict(state)
    nan["denoise_fn.out.2.bias"] = torch.full_like(state["denoise_fn.out.2.bias"], float("nan"))
    cases["NaN weights"] = (write("nan.pt", {"ema": nan}), "NaN")
    bad_width = OrderedDict((k, v) for k, v in state.items())
    bad_width["denoise_fn.time_embed.0.weight"] = torch.zeros(100, 32)
    cases["inconsistent embedding"] = (write("emb.pt", {"ema": bad_width}), "time embedding")
    four_in = OrderedDict(state)
    four_in["denoise_fn.input_blocks.0.0.weight"] = torch.zeros(32, 5, 3, 3, 3)
    cases["unknown family"] = (write("fam.pt", {"ema": four_in}), "matches no Med-DDPM family")
    cases["damaged safetensors"] = (write("x.safetensors", (20).to_bytes(8, "little") + b"{broken"), "damaged safetensors")
    return cases, exploit.marker


def test_bad_checkpoints_give_one_clear_error(tmp_path, tiny_ckpt):
    cases, marker = _bad_files(tmp_path, tiny_ckpt)
    assert len(cases) >= 15
    for name, (path, phrase) in cases.items():
        before = path.read_bytes() if path.is_file() else None
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        message = str(info.value)
        assert __import__("re").search(phrase, message), f"{name}: {message}"
        assert "\n" not in message and len(message) < 600, name
        assert info.value.__cause__ is None or name == "no ema key", name
        if before is not None:
            assert path.read_bytes() == before, f"{name}: input changed"
    assert not marker.exists(), "a pickle was executed"
