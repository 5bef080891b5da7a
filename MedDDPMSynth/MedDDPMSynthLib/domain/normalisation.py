"""The intensity normalisation the models were trained with, invertible; one home for training and insertion.

``official`` (what the released weights need, as the official training scripts do it): whole-head, every slice along the
third NIfTI axis (Z) min-max to [0, 1] (constant slice -> 0), then 2v - 1 (the official scikit-learn
MinMaxScaler on (X*Y, Z)); BraTS, each modality volume min-max to [-1, 1].
``robust-volume`` (our own models' default): the whole volume from its 0.5th to 99.5th percentile inside
the labelled anatomy to [-1, 1], clipped; one scale per volume, robust to a few hot voxels.
Training uses the forward map; inserting a tumour into a real scan also needs the inverse. A robust-volume
model that records its training images' healthy-tissue landmarks (model_options.py) has a scan mapped so
that its healthy tissue lands on them (:meth:`IntensityRange.anchored`): the training images were scaled
with their tumour inside the percentiles, a scan without one would otherwise come out brighter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from MedDDPMSynthLib.domain.families import BRATS, Family
from MedDDPMSynthLib.model.model_options import NORMALISATIONS

ROBUST_PERCENTILES = (0.5, 99.5)
#: the healthy-tissue landmarks a robust-volume model records: median and the robust range's top
HEALTHY_PERCENTILES = (50.0, 99.5)


@dataclass(frozen=True)
class IntensityRange:
    """Per-slice (shape (1, 1, Z)) or per-volume (scalar) minimum and span of an (X, Y, Z) volume."""

    low: np.ndarray
    span: np.ndarray

    @classmethod
    def per_slice(cls, volume_xyz: np.ndarray) -> "IntensityRange":
        v = np.asarray(volume_xyz, dtype=np.float64)
        low = v.min(axis=(0, 1), keepdims=True)
        return cls(low, v.max(axis=(0, 1), keepdims=True) - low)

    @classmethod
    def robust(cls, volume: np.ndarray, inside: np.ndarray | None = None,
               percentiles: tuple[float, float] = ROBUST_PERCENTILES) -> "IntensityRange":
        """Scalar range from percentiles of the voxels ``inside`` (all voxels when None or empty)."""
        v = np.asarray(volume, dtype=np.float64)
        values = v[inside] if inside is not None and np.any(inside) else v.ravel()
        low, high = np.percentile(values, percentiles)
        return cls(np.asarray(low), np.asarray(high - low))

    @classmethod
    def anchored(cls, volume: np.ndarray, healthy: np.ndarray, landmarks: tuple[float, float]) -> "IntensityRange | None":
        """The linear range that puts the median and 99.5th percentile of the ``healthy`` voxels at
        ``landmarks`` (model units); None when those voxels have no spread (nothing to anchor on)."""
        measured = healthy_landmarks(volume, healthy)
        if measured is None or not measured[1] > measured[0]:
            return None
        (median, high), (target_median, target_high) = measured, landmarks
        per_unit = (high - median) / (target_high - target_median)  # intensity per model unit
        return cls(np.asarray(median - (target_median + 1.0) * per_unit), np.asarray(2.0 * per_unit))

    @classmethod
    def per_volume(cls, volume: np.ndarray) -> "IntensityRange":
        v = np.asarray(volume, dtype=np.float64)
        return cls(np.asarray(v.min()), np.asarray(v.max() - v.min()))

    def forward(self, volume: np.ndarray) -> np.ndarray:
        """To the model's [-1, 1] (clipped: a robust range leaves some voxels outside); constant slices or
        volumes become -1."""
        v = np.asarray(volume, dtype=np.float64)
        unit = np.where(self.span > 0, (v - self.low) / np.where(self.span > 0, self.span, 1.0), 0.0)
        return np.clip(2.0 * unit - 1.0, -1.0, 1.0).astype(np.float32)

    def inverse(self, model_values: np.ndarray) -> np.ndarray:
        """Back to the scan's intensities (a constant slice maps back to its constant)."""
        unit = (np.asarray(model_values, dtype=np.float64) + 1.0) / 2.0
        return (self.low + unit * self.span).astype(np.float32)


def healthy_landmarks(volume_xyz: np.ndarray, healthy_xyz: np.ndarray) -> tuple[float, float] | None:
    """Median and 99.5th percentile of the healthy voxels of an image, in its own units (None without any):
    of a normalised training image, what a model records; of a scan, what is anchored on them."""
    values = np.asarray(volume_xyz, dtype=np.float64)[healthy_xyz]
    if values.size == 0:
        return None
    median, high = np.percentile(values, HEALTHY_PERCENTILES)
    return float(median), float(high)


def normalise_per_slice(volume_xyz: np.ndarray) -> np.ndarray:
    return IntensityRange.per_slice(volume_xyz).forward(volume_xyz)


def normalise_per_volume(volume: np.ndarray) -> np.ndarray:
    return IntensityRange.per_volume(volume).forward(volume)


def fit_intensity(volume_xyz: np.ndarray, family: Family, normalisation: str,
                  inside_xyz: np.ndarray | None = None, healthy_xyz: np.ndarray | None = None,
                  landmarks: tuple[float, float] | None = None) -> IntensityRange:
    """The range a model with this ``normalisation`` option maps to [-1, 1]; ``inside_xyz`` marks the labelled
    anatomy (head or brain) of the same (X, Y, Z) grid, used by ``robust-volume``; with the model's healthy
    ``landmarks``, the ``healthy_xyz`` voxels (tissue without tumour) are anchored on them instead."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation '{normalisation}'; use one of {', '.join(NORMALISATIONS)}")
    if normalisation == "robust-volume":
        anchored = None
        if landmarks is not None and healthy_xyz is not None:
            anchored = IntensityRange.anchored(volume_xyz, healthy_xyz, landmarks)
        return anchored or IntensityRange.robust(volume_xyz, inside_xyz)
    return IntensityRange.per_volume(volume_xyz) if family is BRATS else IntensityRange.per_slice(volume_xyz)
