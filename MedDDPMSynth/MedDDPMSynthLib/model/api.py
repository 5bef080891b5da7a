"""The one way into the engine: load a model, build the condition, sample.

>>> model = load_model("model_128.pt", device="cpu")
>>> images = model.generate(labels_xyz, seed=7)          # (N, C, X, Y, Z) float32 in [-1, 1]

``labels_xyz`` is an integer label array in NIfTI axis order (i, j, k) already on a grid the model can
run (each size a multiple of ``model.spatial_divisor``); mapping arbitrary mask files onto such a grid
is the job of the geometry layer. Sample n of a call uses the seed ``seed + n`` with its own CPU
generator; for one sample this is exactly the official RNG protocol.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from MedDDPMSynthLib.model.checkpoint import CheckpointInfo, load_checkpoint, model_options
from MedDDPMSynthLib.model.diffusion import GaussianDiffusion
from MedDDPMSynthLib.domain.labels import check_values
from MedDDPMSynthLib.errors import CheckpointError, InputError, RuntimeFailure
from MedDDPMSynthLib.domain.families import Family, family_for_channels
from MedDDPMSynthLib.model.model_grid import training_grid
from MedDDPMSynthLib.model.model_options import ModelOptions
from MedDDPMSynthLib.model.sampling import (
    CancelCheck,
    Inpainting,
    ProgressCallback,
    SamplerSettings,
    SeededNoise,
    exact_math,
    repaint_schedule,
    run_sampler,
)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if str(device) != "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise InputError("--device mps was asked for but Apple MPS is not available; use --device cpu or auto")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


#: 8 times the official BraTS grid (192x192x144); beyond it one sample needs tens of GiB
MAX_GRID_VOXELS = 256**3


def grid_memory_gib(grid_xyz, model_channels: int = 64) -> float:
    """A rough lower bound of the memory one sample's network pass needs: the first level's activations
    (channels x voxels, float32) kept for about eight layers and skip connections."""
    voxels = int(np.prod([int(v) for v in grid_xyz], dtype=object))
    return voxels * model_channels * 4 * 8 / 2**30


def check_grid_size(grid_xyz, model_channels: int = 64, what: str = "--grid") -> None:
    """Refuse a model grid above MAX_GRID_VOXELS before anything is allocated, with the memory estimate."""
    voxels = int(np.prod([int(v) for v in grid_xyz], dtype=object))
    if voxels > MAX_GRID_VOXELS:
        raise InputError(
            f"{what} {'x'.join(str(int(v)) for v in grid_xyz)} has {voxels:,} voxels, more than the {MAX_GRID_VOXELS:,} "
            f"(256^3) supported: one sample would need about {grid_memory_gib(grid_xyz, model_channels):,.0f} GiB; "
            "give a smaller grid (the official ones are 128,128,128 and 192,192,144)"
        )


@dataclass
class SynthesisModel:
    """A loaded Med-DDPM model with its family, training grid and provenance."""

    diffusion: GaussianDiffusion
    family: Family
    info: CheckpointInfo
    device: torch.device
    grid_xyz: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    #: True when neither the caller, the file nor its training run gave the grid: the family's official
    #: grid is used, which is right for the official weights only (fronts say so)
    grid_is_default: bool = False

    @property
    def timesteps(self) -> int:
        return self.diffusion.num_timesteps

    @property
    def options(self) -> ModelOptions:
        """Prediction target and intensity normalisation the model was trained with (official when unsaid)."""
        return model_options(self.info)

    @property
    def spatial_divisor(self) -> int:
        return self.diffusion.config.divisor

    def condition(self, labels_xyz: np.ndarray) -> torch.Tensor:
        """Condition tensor (1, C, Z, Y, X) on the model's device."""
        return self.family.condition_from_labels(check_label_array(labels_xyz, self.spatial_divisor)).to(self.device)

    def generate(
        self,
        labels_xyz: np.ndarray,
        seed: int = 0,
        samples: int = 1,
        batch: int = 1,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
        sampler: SamplerSettings = SamplerSettings(),
        keep_image: np.ndarray | None = None,
        regenerate: np.ndarray | None = None,
        harmonize: int = 3,
    ) -> np.ndarray:
        """``samples`` synthetic images (N, C, X, Y, Z) float32 in [-1, 1] for one label array.

        Sample n uses seed ``seed + n`` whatever the batch size, so a batch equals single runs.
        ``progress(done, total)`` counts sample-steps over all batches; ``cancel()`` is checked before
        every step and raises :class:`GenerationCancelled`. The default sampler is the official one (the
        fronts choose a per-device default with :func:`presets.choose_sampler`).

        Local re-generation: ``keep_image`` (C, X, Y, Z) in [-1, 1] is kept wherever the boolean
        ``regenerate`` (X, Y, Z) is False (RePaint with ``harmonize`` resampling rounds; on all T steps with
        ``ddpm``, on the sampler's sub-sequence of steps with a fast sampler).
        """
        if samples < 1 or batch < 1:
            raise InputError("samples and batch must be at least 1; use e.g. samples=1, batch=1")
        sampler.check(self.timesteps)
        cond = self.condition(labels_xyz)
        inpaint = None if keep_image is None else self._inpainting(keep_image, regenerate, harmonize)
        steps = inpainting_evaluations(inpaint, sampler, self.timesteps) if inpaint else sampler.evaluations(self.timesteps)
        total = samples * steps
        outputs = []
        for start in range(0, samples, batch):
            n = min(batch, samples - start)
            shape = (n, self.family.image_channels, *cond.shape[2:])
            noise = SeededNoise([seed + start + i for i in range(n)], shape, self.device)
            report = None if progress is None else (lambda d, _t, o=start * steps, k=n: progress(o + d * k, total))
            try:
                with exact_math(sampler.precision == "fp32"):
                    images = run_sampler(
                        self.diffusion, cond.expand(n, -1, -1, -1, -1), noise, sampler, report, cancel, inpaint
                    )
            except torch.OutOfMemoryError:
                advice = "--batch 1 or --precision bf16" + ("" if self.device.type == "cpu" else " or --device cpu")
                raise RuntimeFailure(
                    f"out of {self.device.type.upper()} memory for a batch of {n} at grid {tuple(cond.shape[2:])}; "
                    f"use {advice}"
                ) from None
            _check_network_output(images, self.info.path)
            outputs.append(self.family.images_to_xyz(images))
        return np.concatenate(outputs)

    def _inpainting(self, keep_image: np.ndarray, regenerate: np.ndarray | None, harmonize: int) -> Inpainting:
        image = np.asarray(keep_image, dtype=np.float32)
        if regenerate is None or image.ndim != 4 or image.shape[0] != self.family.image_channels:
            raise InputError(
                f"local re-generation needs the previous image ({self.family.image_channels} channel(s)) and a "
                "region to regenerate"
            )
        region = np.asarray(regenerate, dtype=bool)
        if region.shape != image.shape[1:]:
            raise InputError(f"region {region.shape} and previous image {image.shape[1:]} differ in size")
        if not region.any():
            raise InputError("the region to regenerate is empty; move or edit the tumour first")
        if harmonize < 1:
            raise InputError("--harmonize must be at least 1")
        known = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 2, 1)))[None].to(self.device)
        keep = torch.from_numpy(np.ascontiguousarray((~region).transpose(2, 1, 0)))[None, None].to(self.device)
        jump = max(1, min(10, self.timesteps // 5))  # RePaint's 10 for T = 250; shorter for tiny T
        return Inpainting(known.clamp(-1, 1), keep.float(), jump=jump, resample=harmonize)


def inpainting_evaluations(inpaint: Inpainting, sampler: SamplerSettings, timesteps: int) -> int:
    """Network evaluations of one in-painting run (official RePaint, or on the fast sampler's steps)."""
    if sampler.name == "ddpm":
        return sum(1 for a, _ in repaint_schedule(timesteps, inpaint.jump, inpaint.resample) if a == "denoise")
    from MedDDPMSynthLib.model.repaint_fast import fast_repaint_evaluations
    return fast_repaint_evaluations(inpaint, timesteps, sampler.evaluations(timesteps), sampler.spacing)


def _check_network_output(images: torch.Tensor, path) -> None:
    """Refuse instead of writing garbage: NaN/Inf, or a sample that is one constant value (huge or
    altered weights saturate every voxel at the clipping bound; written, it would look like success)."""
    flat = images.detach().reshape(images.shape[0], -1)
    if not bool(torch.isfinite(flat).all()):
        problem = "NaN or infinite values"
    elif bool((flat.amax(dim=1) == flat.amin(dim=1)).any()):
        problem = f"a constant image (every voxel {float(flat[0, 0]):g})"
    else:
        return
    raise CheckpointError(
        f"the model {Path(path).name} produced {problem}, so its weights are damaged or not a trained Med-DDPM "
        "model; nothing was written; use the original checkpoint"
    )


def check_label_array(labels_xyz: np.ndarray, divisor: int = 1) -> np.ndarray:
    """Integer 3-D label array whose sizes the U-Net can process, or an :class:`InputError`."""
    labels = np.asarray(labels_xyz)
    if labels.ndim != 3:
        raise InputError(f"the mask must be a 3-D volume, got {labels.ndim}-D shape {labels.shape}; give a 3-D label map")
    labels = check_values(labels)  # the one label-value check (finite, integer, sane size and range)
    bad = [s for s in labels.shape if s % divisor]
    if bad:
        raise InputError(
            f"mask size {labels.shape} is not a multiple of {divisor} on every axis, which this model "
            "needs; resample it to the model grid (the command line does this with --geometry physical)"
        )
    return labels


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    num_heads: int = 1,
    grid_xyz: tuple[int, int, int] | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
) -> SynthesisModel:
    """Load a Med-DDPM checkpoint of any official-format configuration onto ``device``.

    The training grid comes from ``grid_xyz``/``spacing_mm`` (e.g. a catalogue entry), else the file's
    safetensors metadata, else the training run's config.json beside it, else the family's official grid."""
    diffusion, info = load_checkpoint(path, num_heads=num_heads)
    return model_from_checkpoint(diffusion, info, path, device, grid_xyz, spacing_mm)


def model_from_checkpoint(
    diffusion: GaussianDiffusion,
    info: CheckpointInfo,
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    grid_xyz: tuple[int, int, int] | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
) -> SynthesisModel:
    """A :class:`SynthesisModel` from an already loaded checkpoint (see :func:`load_model`)."""
    config = diffusion.config
    family = family_for_channels(config.in_channels, config.out_channels)
    dev = resolve_device(device)
    landmarks = model_options(info).healthy_landmarks
    if landmarks is not None and len(landmarks) != family.image_channels:
        raise CheckpointError(
            f"{Path(path).name} records healthy-tissue landmarks for {len(landmarks)} image channel(s) but is a "
            f"{family.name} model with {family.image_channels}; the file is damaged: export it again from its run")
    grid, spacing, from_file = training_grid(path, info, family, grid_xyz, spacing_mm)
    grid, spacing = tuple(grid), tuple(spacing)
    check_grid_size(grid, config.model_channels, f"the grid of {Path(path).name}")
    model = SynthesisModel(diffusion.to(dev), family, info, dev, grid, spacing)
    model.grid_is_default = not from_file
    return model
