"""Reading and writing Med-DDPM checkpoints, with the architecture inferred from the tensors.

Accepted: the official ``{step, model, ema}`` dict (``ema`` is used), a bare wrapper state dict
(13 schedule buffers + ``denoise_fn.*``), and safetensors files of the same keys. Files are read with
``torch.load(weights_only=True)``: a pickle that would run code is refused, never executed. Every
failure is a :class:`CheckpointError` naming the problem and the fix.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from MedDDPMSynthLib.model.diffusion import GaussianDiffusion
from MedDDPMSynthLib.errors import CheckpointError
from MedDDPMSynthLib.model.model_options import CHECKPOINT_KEY, ModelOptions
from MedDDPMSynthLib.model.schedule import BUFFER_NAMES
from MedDDPMSynthLib.model.unet import GROUPS, UNetConfig
from MedDDPMSynthLib.io.outputs import atomic_write

PREFIX = "denoise_fn."
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


@dataclass
class CheckpointInfo:
    """What a file holds besides the weights."""

    path: Path
    container: str  # "official", "state_dict" or "safetensors"
    weights_key: str | None  # "ema", "model", ... or None for a bare state dict
    step: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_SAFE_GLOBAL_PREFIXES = ("torch", "collections.OrderedDict", "_codecs.encode", "numpy")


def _foreign_globals(path: Path) -> list[str] | None:
    """Globals a pickle would import, read with pickletools (which never executes anything).

    None when the pickle stream itself is unreadable (a damaged file)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(name)
        else:
            data = path.read_bytes()
        found, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # any parse failure means a damaged stream, which is reported as such
        return None
    return sorted({g for g in found if not g.startswith(_SAFE_GLOBAL_PREFIXES)})


def _refused_globals(exc: Exception) -> list[str]:
    """The globals torch's weights-only unpickler refused, as named in its message: it also refuses
    names that merely start with 'torch' (e.g. ``torch.x.system``), which the list above lets through."""
    return sorted(set(re.findall(r"unsupported global:? (?:GLOBAL )?([\w.]+)", str(exc), flags=re.IGNORECASE)))


def _read_file(path: Path) -> tuple[object, str, dict[str, str]]:
    """Raw object in the file, its container kind and safetensors metadata."""
    if not path.exists():
        raise CheckpointError(f"model file not found: {path}; check the path (or import it with 'medddpm-synth models import')")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a model file; give the path of the .pt/.safetensors file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise CheckpointError(f"cannot read model file {path}: {exc.strerror}; check its permissions") from None
    if not head:
        raise CheckpointError(f"model file {path} is empty; download or copy it again")

    if head[8:9] == b"{":  # safetensors: 8-byte header length, then a JSON header
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                tensors = OrderedDict((k, handle.get_tensor(k)) for k in handle.keys())
                return tensors, "safetensors", dict(handle.metadata() or {})
        except (SafetensorError, ValueError, OSError) as exc:
            raise CheckpointError(
                f"{path} is a damaged safetensors file ({exc}); download or copy it again"
            ) from None

    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint or safetensors file; give a Med-DDPM .pt file "
            "(such as model_128.pt or model_brats.pt)"
        )
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing them
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        foreign = _foreign_globals(path) or _refused_globals(exc)
        if foreign:
            raise CheckpointError(
                f"{path} contains Python objects that would run code when loaded ({', '.join(foreign[:3])}), "
                "so it was refused unopened; use a checkpoint that holds only tensors (the official files do)"
            ) from None
        raise CheckpointError(f"{path} is truncated or corrupt (unreadable pickle data); download or copy it again") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is truncated or corrupt ({first}); download or copy it again"
        ) from None
    return obj, "torch", {}


def _pick_state_dict(obj: object, path: Path, container: str) -> tuple[Mapping, str | None, int | None]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict; give a Med-DDPM checkpoint"
        )
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None, None
    step = obj.get("step") if isinstance(obj.get("step"), int) else None
    for key in ("ema", "model", "state_dict"):  # the official sampler uses 'ema'
        if isinstance(obj.get(key), Mapping):
            return obj[key], key, step
    raise CheckpointError(
        f"{path} has no 'ema' weights (top-level keys: {sorted(map(str, obj))[:8]}); "
        "give an official-format Med-DDPM checkpoint ({step, model, ema})"
    )


def _options_entry(obj: object, path: Path) -> dict[str, str]:
    """The ``medddpm_options`` entry of a checkpoint dict written by our trainer (strings only), or {}."""
    entry = obj.get(CHECKPOINT_KEY) if isinstance(obj, Mapping) else None
    if entry is None:
        return {}
    if not isinstance(entry, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in entry.items()):
        raise CheckpointError(f"{path} has a malformed '{CHECKPOINT_KEY}' entry; export the model again from its run")
    return dict(entry)


def model_options(info: CheckpointInfo) -> ModelOptions:
    """The prediction target and normalisation a file says it was trained with (official when silent)."""
    try:
        return ModelOptions.from_metadata(info.metadata)
    except ValueError as error:
        raise CheckpointError(f"{info.path}: {error}; the file was written by a newer version or is damaged") from None


def read_state_dict(path: str | os.PathLike) -> tuple["OrderedDict[str, torch.Tensor]", CheckpointInfo]:
    """The wrapper state dict (float32, ``denoise_fn.``-prefixed) of a checkpoint file."""
    path = Path(path)
    obj, container, metadata = _read_file(path)
    metadata = {**metadata, **_options_entry(obj, path)}
    state, key, step = _pick_state_dict(obj, path, container)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries {bad[:5]} are not tensors; give a Med-DDPM checkpoint")
    _check_dtypes(state, path)
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):  # saved from a DataParallel wrapper
        state = OrderedDict((k[len("module."):], v) for k, v in state.items())
    state = OrderedDict(
        (k, v.float() if v.is_floating_point() else v) for k, v in state.items()
    )
    if not any(k.startswith(PREFIX) for k in state):
        hint = " (a bare U-Net without the diffusion wrapper)" if "time_embed.0.weight" in state else ""
        raise CheckpointError(
            f"{path} is not a Med-DDPM diffusion checkpoint{hint}: no '{PREFIX}*' weights found "
            f"(first keys: {list(state)[:4]}); give the official model_128.pt / model_brats.pt or a "
            "checkpoint written by 'medddpm-synth train'"
        )
    missing = [b for b in BUFFER_NAMES if b not in state]
    if missing:
        raise CheckpointError(
            f"{path} lacks the diffusion schedule buffers {missing[:3]}...; it is not a complete "
            "Med-DDPM wrapper state dict"
        )
    container = "official" if key == "ema" and container == "torch" else container
    container = "state_dict" if container == "torch" else container
    return state, CheckpointInfo(path, container, key, step, metadata)


def _check_dtypes(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Weights and schedule are real floating-point numbers. Integer or complex weights would be cast
    (or fail) silently and produce a constant image, so they are refused by name."""
    names = {k: k[len("module."):] if k.startswith("module.") else k for k in state}
    bad = [f"{k} ({str(v.dtype).replace('torch.', '')})" for k, v in state.items()
           if (names[k].startswith(PREFIX) or names[k] in BUFFER_NAMES) and (v.is_complex() or not v.is_floating_point())]
    if bad:
        raise CheckpointError(
            f"{path} has non-float weights ({', '.join(bad[:3])}); a Med-DDPM checkpoint holds float32/float16/"
            "bfloat16 tensors, so this file is damaged or was converted wrongly; use the original checkpoint"
        )


def _check_schedule(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """The diffusion schedule must be one: betas in (0, 1), alphas_cumprod decreasing in (0, 1).
    A negated or scaled schedule samples without error but writes a constant image."""
    betas, cumprod = state["betas"].double(), state["alphas_cumprod"].double()
    valid = (betas.ndim == 1 and cumprod.shape == betas.shape and bool(((betas > 0) & (betas < 1)).all())
             and bool(((cumprod > 0) & (cumprod < 1)).all()) and bool((cumprod[1:] <= cumprod[:-1]).all()))
    if not valid:
        raise CheckpointError(
            f"{path} holds no valid diffusion schedule (betas must lie between 0 and 1 and alphas_cumprod "
            "decrease from below 1 towards 0); the file is damaged or altered; use the original checkpoint"
        )


def _shape(state: Mapping[str, torch.Tensor], key: str, path: Path) -> tuple[int, ...]:
    if PREFIX + key not in state:
        raise CheckpointError(
            f"{path}: expected weight '{PREFIX}{key}' is missing; the file is not a Med-DDPM U-Net"
        )
    return tuple(state[PREFIX + key].shape)


def infer_config(state: Mapping[str, torch.Tensor], path: Path | str = "checkpoint") -> tuple[UNetConfig, int]:
    """U-Net configuration and number of timesteps read off the tensor names and shapes."""
    path = Path(path)
    emb_out, mc = _shape(state, "time_embed.0.weight", path)
    stem_out, in_ch = _shape(state, "input_blocks.0.0.weight", path)[:2]
    out_ch = _shape(state, "out.2.weight", path)[0]
    if emb_out != 4 * mc:
        raise CheckpointError(f"{path}: time embedding {emb_out}x{mc} is not 4*C x C; not a Med-DDPM U-Net")

    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(rf"{PREFIX}input_blocks\.(\d+)\.", k))})
    levels: list[list[tuple[int, bool]]] = [[]]
    for i in blocks[1:]:
        base = f"input_blocks.{i}."
        if PREFIX + base + "0.op.weight" in state:
            levels.append([])
        elif PREFIX + base + "0.out_layers.3.weight" in state:
            width = state[PREFIX + base + "0.out_layers.3.weight"].shape[0]
            levels[-1].append((width, PREFIX + base + "1.qkv.weight" in state))
        else:
            raise CheckpointError(
                f"{path}: input block {i} is neither a res-block nor a downsample, so the file is not a "
                "complete Med-DDPM U-Net; download or copy it again"
            )
    nrb = len(levels[0])
    if nrb == 0 or any(len(level) != nrb for level in levels):
        raise CheckpointError(
            f"{path}: levels have {[len(lv) for lv in levels]} res-blocks; expected the same number per level"
        )
    mult, attention = [], []
    for ds_exp, level in enumerate(levels):
        widths = {w for w, _ in level}
        if len(widths) != 1 or next(iter(widths)) % mc:
            raise CheckpointError(f"{path}: level {ds_exp} widths {sorted(widths)} are not one multiple of {mc}")
        mult.append(next(iter(widths)) // mc)
        if any(a for _, a in level):
            attention.append(2**ds_exp)
    if stem_out != mc * mult[0]:
        raise CheckpointError(f"{path}: first conv has {stem_out} channels, expected {mc * mult[0]}")
    if any((mc * m) % GROUPS for m in mult):
        raise CheckpointError(f"{path}: channel widths must be multiples of {GROUPS}")
    timesteps = int(state["betas"].shape[0])
    config = UNetConfig(in_ch, out_ch, mc, tuple(mult), nrb, tuple(attention))
    return config, timesteps


def build_model(state: Mapping[str, torch.Tensor], path: Path | str = "checkpoint", num_heads: int = 1,
                prediction: str = "eps") -> GaussianDiffusion:
    """Infer the architecture, build it and load ``state`` strictly; explain any mismatch."""
    path = Path(path)
    config, timesteps = infer_config(state, path)
    config = UNetConfig(**{**config.__dict__, "num_heads": num_heads})
    with torch.device("meta"):
        model = GaussianDiffusion(config, timesteps, prediction=prediction)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"{len(wrong)} with wrong shapes (e.g. {wrong[:2]})")
        raise CheckpointError(
            f"{path} does not match the Med-DDPM architecture inferred from it: "
            + "; ".join(parts)
            + ". The file is damaged or from another model; use an official-format Med-DDPM checkpoint"
        )
    nonfinite = _nonfinite(state)
    if nonfinite:
        raise CheckpointError(f"{path} has NaN/Inf values in {nonfinite[:3]}; the weights are damaged")
    _check_schedule(state, path)
    # the meta-device model takes the loaded tensors themselves (no second copy of the weights, and no
    # allocation of empty ones first); the state's tensors belong to the model afterwards
    model.load_state_dict(OrderedDict((k, v.contiguous()) for k, v in state.items()), strict=True, assign=True)
    return model.eval()


def _nonfinite(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or Inf. One float64 sum per tensor, stacked and
    checked once: a NaN or Inf anywhere makes its sum non-finite, and float64 cannot overflow on finite
    float32/16 values, so this is exact - and one read of the weights, with no boolean copy of them.
    Only when something is found are the tensors checked one by one, to name them."""
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    if not floats:
        return []
    sums = torch.stack([v.sum(dtype=torch.float64) for v in floats.values()])
    if bool(torch.isfinite(sums).all()):
        return []
    return [k for k, v in floats.items() if not bool(torch.isfinite(v).all())]


def load_checkpoint(path: str | os.PathLike, num_heads: int = 1) -> tuple[GaussianDiffusion, CheckpointInfo]:
    """Read, infer, build and strictly load a checkpoint file (on the CPU)."""
    state, info = read_state_dict(path)
    return build_model(state, info.path, num_heads, model_options(info).prediction), info


def save_official_checkpoint(
    path: str | os.PathLike, model_state: Mapping, ema_state: Mapping, step: int,
    options: ModelOptions = ModelOptions(),
) -> None:
    """Write ``{step, model, ema}`` exactly like the official trainer (key order included), atomically;
    options that differ from the official ones are added as ``medddpm_options`` (loaders ignore extra keys)."""
    payload = {"step": int(step), "model": OrderedDict(model_state), "ema": OrderedDict(ema_state)}
    if options.non_default():
        payload[CHECKPOINT_KEY] = options.non_default()
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp), durable=True)


def save_safetensors(
    path: str | os.PathLike, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write a wrapper state dict as safetensors (optionally cast, e.g. to fp16), atomically."""
    from safetensors.torch import save_file

    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() and k not in BUFFER_NAMES else v)
        .detach().cpu().contiguous()
        for k, v in state.items()
    }
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=dict(metadata or {})), durable=True)
