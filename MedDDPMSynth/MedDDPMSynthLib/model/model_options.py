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

Where they live: safetensors metadata (``prediction``, ``normalisation``), an official-format checkpoint's
optional ``medddpm_options`` entry (written only when an option differs from the official value, so a
checkpoint trained the official way is exactly the official format) and the training run's config.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

PREDICTIONS = ("eps", "v", "x0")
NORMALISATIONS = ("official", "robust-volume")
#: the entry of an official-format checkpoint dict that carries non-official options
CHECKPOINT_KEY = "medddpm_options"


@dataclass(frozen=True)
class ModelOptions:
    prediction: str = "eps"
    normalisation: str = "official"

    def __post_init__(self):
        for name, value, allowed in (("prediction", self.prediction, PREDICTIONS),
                                     ("normalisation", self.normalisation, NORMALISATIONS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} '{value}'; use one of {', '.join(allowed)}")

    @property
    def official(self) -> bool:
        return self == ModelOptions()

    def to_metadata(self) -> dict[str, str]:
        return asdict(self)

    def non_default(self) -> dict[str, str]:
        """Only the options that differ from the official ones (what a checkpoint dict carries)."""
        return {k: v for k, v in asdict(self).items() if v != getattr(ModelOptions(), k)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object]) -> "ModelOptions":
        """From safetensors metadata, a checkpoint's options entry or a run config; absent keys are official."""
        return cls(**{k: str(metadata[k]) for k in ("prediction", "normalisation") if metadata.get(k)})
