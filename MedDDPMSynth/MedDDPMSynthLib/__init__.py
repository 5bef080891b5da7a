"""MedDDPMSynth engine: the Med-DDPM conditional diffusion model (JBHI 2024) in plain PyTorch.

No Slicer or Qt imports here; the Slicer module, the command line and the tests all use this API.
"""

from importlib import import_module

# Names are imported on first use (PEP 562): importing the package, or a torch-free submodule such as
# ``MedDDPMSynthLib.resources``, must not import torch, which the Slicer module installs only on first use.
_EXPORTS = {
    "SynthesisModel": "model.api", "check_label_array": "model.api", "load_model": "model.api", "resolve_device": "model.api",
    "load_checkpoint": "model.checkpoint", "read_state_dict": "model.checkpoint", "save_official_checkpoint": "model.checkpoint",
    "save_safetensors": "model.checkpoint",
    "GaussianDiffusion": "model.diffusion",
    "CheckpointError": "errors", "GenerationCancelled": "errors", "InputError": "errors", "MedDDPMError": "errors",
    "OutputError": "errors", "RuntimeFailure": "errors",
    "BRATS": "domain.families", "FAMILIES": "domain.families", "WHOLE_HEAD": "domain.families", "Family": "domain.families",
    "SAMPLERS": "model.sampling", "SamplerSettings": "model.sampling", "SeededNoise": "model.sampling", "ddpm_sample": "model.sampling",
    "run_sampler": "model.sampling",
    "UNet3D": "model.unet", "UNetConfig": "model.unet",
}

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


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
