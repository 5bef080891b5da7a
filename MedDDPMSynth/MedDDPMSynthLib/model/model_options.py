"""What a model was trained to do besides its weights: the prediction target and the intensity normalisation.

The official checkpoints predict the noise (``eps``) and were trained on the official normalisation
(whole-head: every axial slice min-max on its own; BraTS: every modality volume min-max). Our own models
may do better, and say so in the file, so that every sampler and every workflow reads them back:

* ``prediction``: ``eps`` (official), ``v`` (v = sqrt(abar) eps - sqrt(1 - abar) x0, Salimans & Ho 2022) or
  ``x0``. An eps network's small errors are multiplied by up to 1/sqrt(abar) (about 5000 on the cosine
  schedule's last step) in the x0 estimate; a v or x0 network predicts the image directly where the noisy
  input says nothing, so the first steps take brightness and background from the mask, not from the seed.
* ``normalisation``: ``official`` (as above) or ``robust-volume``: the whole volume scaled from its 0.5th
  to its 99.5th percentile inside the labelled anatomy to [-1, 1] (clipped), one scale per volume, so
  slices keep their relative brightness (per-slice scaling puts a dark band through every bright tumour
  and stripes along Z).
* ``healthy_landmarks`` (robust-volume models, optional): per image channel, the median and the 99.5th
  percentile of the healthy tissue (the family's tissue label, no tumour) in model units, as a median over
  the training images. Training scaled each image with its tumour inside the percentiles; a real scan
  without one, scaled the same way, puts its white matter where the model's tumours sit (an inserted
  tumour comes out fainter than the tissue it replaces). With the landmarks, insertion maps the scan's
  healthy tissue onto them instead (two-landmark histogram standardisation, Nyul & Udupa 1999).

Where they live: safetensors metadata (``prediction``, ``normalisation``, ``healthy_landmarks`` as
``"median,high"`` per channel, channels separated by ``;``), an official-format checkpoint's
optional ``medddpm_options`` entry (written only when an option differs from the official value, so a
checkpoint trained the official way is exactly the official format) and the training run's config.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

PREDICTIONS = ("eps", "v", "x0")
NORMALISATIONS = ("official", "robust-volume")
#: the entry of an official-format checkpoint dict that carries non-official options
CHECKPOINT_KEY = "medddpm_options"


Landmarks = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class ModelOptions:
    prediction: str = "eps"
    normalisation: str = "official"
    healthy_landmarks: Landmarks | None = None  # one (median, 99.5th percentile) per image channel

    def __post_init__(self):
        for name, value, allowed in (("prediction", self.prediction, PREDICTIONS),
                                     ("normalisation", self.normalisation, NORMALISATIONS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} '{value}'; use one of {', '.join(allowed)}")
        if self.healthy_landmarks is not None:
            landmarks = tuple((float(m), float(h)) for m, h in self.healthy_landmarks)
            if not landmarks or not all(math.isfinite(m) and math.isfinite(h) and -1.0 <= m < h <= 1.0 for m, h in landmarks):
                raise ValueError(f"healthy landmarks {self.healthy_landmarks} must be (median, high) pairs with "
                                 "-1 <= median < high <= 1")
            if self.normalisation != "robust-volume":
                raise ValueError("healthy landmarks belong to the robust-volume normalisation only")
            object.__setattr__(self, "healthy_landmarks", landmarks)

    @property
    def official(self) -> bool:
        return self == ModelOptions()

    def to_metadata(self) -> dict[str, str]:
        """Strings only (safetensors metadata, a checkpoint's options entry, a catalogue entry)."""
        metadata = {"prediction": self.prediction, "normalisation": self.normalisation}
        if self.healthy_landmarks is not None:
            metadata["healthy_landmarks"] = format_landmarks(self.healthy_landmarks)
        return metadata

    def non_default(self) -> dict[str, str]:
        """Only the options that differ from the official ones (what a checkpoint dict carries)."""
        official = ModelOptions().to_metadata()
        return {k: v for k, v in self.to_metadata().items() if official.get(k) != v}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object]) -> "ModelOptions":
        """From safetensors metadata, a checkpoint's options entry or a run config; absent keys are official."""
        values = {k: str(metadata[k]) for k in ("prediction", "normalisation") if metadata.get(k)}
        landmarks = metadata.get("healthy_landmarks")
        return cls(**values, healthy_landmarks=parse_landmarks(landmarks) if landmarks else None)


def format_landmarks(landmarks: Landmarks) -> str:
    return ";".join(f"{m:.4f},{h:.4f}" for m, h in landmarks)


def parse_landmarks(value: str | Sequence) -> Landmarks:
    """``"m,h;m,h"`` (metadata) or ``[[m, h], ...]`` (a run's config.json)."""
    try:
        if isinstance(value, str):
            return tuple(tuple(float(v) for v in pair.split(",")) for pair in value.split(";"))  # type: ignore[misc]
        return tuple((float(m), float(h)) for m, h in value)
    except (TypeError, ValueError):
        raise ValueError(f"healthy landmarks '{value}' are not (median, high) pairs") from None
