"""The intensity normalisation the models were trained with (reference section 4.3), invertible.

Whole-head: every slice along the third NIfTI axis (Z) min-max to [0, 1] (constant slice -> 0), then
2v - 1 (the official scikit-learn MinMaxScaler on (X*Y, Z)). BraTS: each modality volume min-max to
[-1, 1]. Training uses the forward map; inserting a tumour into a real scan also needs the inverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    def per_volume(cls, volume: np.ndarray) -> "IntensityRange":
        v = np.asarray(volume, dtype=np.float64)
        return cls(np.asarray(v.min()), np.asarray(v.max() - v.min()))

    def forward(self, volume: np.ndarray) -> np.ndarray:
        """To the model's [-1, 1]; constant slices/volumes become -1."""
        v = np.asarray(volume, dtype=np.float64)
        unit = np.where(self.span > 0, (v - self.low) / np.where(self.span > 0, self.span, 1.0), 0.0)
        return (2.0 * unit - 1.0).astype(np.float32)

    def inverse(self, model_values: np.ndarray) -> np.ndarray:
        """Back to the scan's intensities (a constant slice maps back to its constant)."""
        unit = (np.asarray(model_values, dtype=np.float64) + 1.0) / 2.0
        return (self.low + unit * self.span).astype(np.float32)


def normalise_per_slice(volume_xyz: np.ndarray) -> np.ndarray:
    return IntensityRange.per_slice(volume_xyz).forward(volume_xyz)


def normalise_per_volume(volume: np.ndarray) -> np.ndarray:
    return IntensityRange.per_volume(volume).forward(volume)
