"""What defines a training run (:class:`TrainConfig`): architecture, data grid, optimisation, objective and
model options, checked in one place with one message per bad value, and written to the run's config.json.
The trainer (trainer.py) and ``medddpm-synth train`` (cli/train.py) read it; the learning-rate curve is a
function of the step alone, so a resumed run continues the same curve.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch.nn.functional as F

from MedDDPMSynthLib.domain.families import FAMILIES
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.model.api import check_grid_size
from MedDDPMSynthLib.model.model_options import NORMALISATIONS, PREDICTIONS, ModelOptions
from MedDDPMSynthLib.model.sampling import PRECISIONS
from MedDDPMSynthLib.model.unet import UNetConfig

LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}
WEIGHTINGS = ("uniform", "truncated-snr")
LR_SCHEDULES = ("constant", "cosine")
#: config fields that fix the weights' shapes: a resumed run must keep them
ARCHITECTURE = ("family", "model_channels", "channel_mult", "num_res_blocks", "attention_ds", "timesteps")


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``grid_xyz``/``spacing_mm`` None: the family's grid."""

    family: str = "whole_head"
    grid_xyz: tuple[int, int, int] | None = None
    spacing_mm: tuple[float, float, float] | None = None
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 1
    attention_ds: tuple[int, ...] = (8,)
    num_heads: int = 1
    timesteps: int = 250
    lr: float = 1e-5
    batch_size: int = 1
    grad_accum: int = 2
    ema_decay: float = 0.995
    ema_every: int = 10
    ema_start: int = 2000
    steps: int = 50000
    save_every: int = 1000
    log_every: int = 1
    precision: str = "fp32"
    seed: int = 0
    loss: str = "l1"
    weighting: str = "uniform"
    num_workers: int = 0
    prediction: str = "eps"
    normalisation: str = "robust-volume"  # new runs; fine-tuning an official checkpoint keeps "official"
    lr_schedule: str = "constant"
    # robust-volume: the training images' healthy-tissue landmarks per channel, measured on the data at the
    # start of every (resumed) run and recorded in the model for insertion (model_options.py)
    healthy_landmarks: tuple = ()

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise InputError(f"unknown model family '{self.family}'; use one of {', '.join(FAMILIES)}")
        family = FAMILIES[self.family]
        self.grid_xyz = tuple(int(v) for v in (self.grid_xyz or family.grid_xyz))
        self.spacing_mm = tuple(float(v) for v in (self.spacing_mm or family.spacing_mm))
        self.channel_mult = tuple(int(v) for v in self.channel_mult)
        self.attention_ds = tuple(int(v) for v in self.attention_ds)
        self.healthy_landmarks = tuple(tuple(float(v) for v in pair) for pair in self.healthy_landmarks)

    def unet(self) -> UNetConfig:
        family = FAMILIES[self.family]
        return UNetConfig(
            family.image_channels + family.condition_channels, family.image_channels, self.model_channels,
            self.channel_mult, self.num_res_blocks, self.attention_ds, self.num_heads,
        )

    def check(self) -> None:
        """InputError for any value training cannot run with, saying which option to change."""
        for name, value, allowed in (("precision", self.precision, PRECISIONS), ("loss", self.loss, LOSSES),
                                     ("weighting", self.weighting, WEIGHTINGS), ("prediction", self.prediction, PREDICTIONS),
                                     ("normalisation", self.normalisation, NORMALISATIONS),
                                     ("lr-schedule", self.lr_schedule, LR_SCHEDULES)):
            if value not in allowed:
                raise InputError(f"unknown {name} '{value}'; use one of {', '.join(allowed)}")
        if self.weighting != "uniform" and self.prediction != "eps":
            raise InputError(f"--weighting {self.weighting} re-weights eps prediction; a {self.prediction}-predicting "
                             "model already weights the high noise levels (drop --weighting)")
        counts = (self.batch_size, self.grad_accum, self.ema_every, self.steps, self.save_every, self.log_every, self.timesteps)
        if min(counts) < 1 or self.num_workers < 0 or self.ema_start < 0:
            raise InputError("batch, accumulation, steps, save/log/EMA intervals and timesteps must be at least 1")
        if not (0.0 < self.ema_decay < 1.0 and self.lr > 0):
            raise InputError("the EMA decay must lie in (0, 1) and the learning rate be positive")
        try:
            self.unet().check()
        except ValueError as error:
            raise InputError(f"{error}; change --channels or --mult") from None
        divisor = self.unet().divisor
        if len(self.grid_xyz) != 3 or any(g < 1 or g % divisor for g in self.grid_xyz):
            raise InputError(f"--grid {self.grid_xyz} must be three positive multiples of {divisor} for {len(self.channel_mult)} levels")
        check_grid_size(self.grid_xyz, self.model_channels)
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise InputError(f"--spacing {self.spacing_mm} must be three positive sizes in mm")

    def to_dict(self) -> dict:
        return {k: _lists(v) for k, v in asdict(self).items()}

    @property
    def options(self) -> ModelOptions:
        landmarks = self.healthy_landmarks if self.normalisation == "robust-volume" and self.healthy_landmarks else None
        return ModelOptions(self.prediction, self.normalisation, landmarks)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (1-based): constant, or cosine from lr down to lr/10 at
        ``steps``. A function of the step alone, so a resumed run continues the same curve."""
        if self.lr_schedule == "constant":
            return self.lr
        progress = min(1.0, max(0, step - 1) / max(1, self.steps - 1))
        return self.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {"normalisation": "official", **values}  # runs from before the option used the official one
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})


def _lists(value):
    return [_lists(v) for v in value] if isinstance(value, tuple) else value
