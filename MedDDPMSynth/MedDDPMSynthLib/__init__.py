"""MedDDPMSynth engine: the Med-DDPM conditional diffusion model (JBHI 2024) in plain PyTorch.

No Slicer or Qt imports here; the Slicer module, the command line and the tests all use this API.
"""

from .api import SynthesisModel, check_label_array, load_model, resolve_device
from .checkpoint import load_checkpoint, read_state_dict, save_official_checkpoint, save_safetensors
from .diffusion import GaussianDiffusion
from .errors import (
    CheckpointError,
    GenerationCancelled,
    InputError,
    MedDDPMError,
    OutputError,
    RuntimeFailure,
)
from .families import BRATS, FAMILIES, WHOLE_HEAD, Family
from .sampling import SAMPLERS, SamplerSettings, SeededNoise, ddpm_sample, run_sampler
from .unet import UNet3D, UNetConfig

__version__ = "0.1.0"

__all__ = [
    "BRATS",
    "FAMILIES",
    "WHOLE_HEAD",
    "CheckpointError",
    "Family",
    "GaussianDiffusion",
    "GenerationCancelled",
    "InputError",
    "MedDDPMError",
    "OutputError",
    "RuntimeFailure",
    "SAMPLERS",
    "SamplerSettings",
    "SeededNoise",
    "SynthesisModel",
    "UNet3D",
    "UNetConfig",
    "check_label_array",
    "ddpm_sample",
    "load_checkpoint",
    "load_model",
    "read_state_dict",
    "resolve_device",
    "run_sampler",
    "save_official_checkpoint",
    "save_safetensors",
]
