"""First-use installation of the engine's Python dependencies inside Slicer, after the user agrees.

PyTorch comes from the PyTorch extension's ``PyTorchUtils`` (it picks the build for the computer's CUDA);
the rest through ``slicer.pydeps.pip_ensure`` (Slicer >= 5.11) or ``slicer.util.pip_install``. Nothing
here imports the engine (which needs torch); :func:`missing_packages` is plain Python.
"""

from __future__ import annotations

import importlib.util

#: import name -> pip requirement (the engine's dependencies that Slicer does not bundle)
REQUIREMENTS = {
    "nibabel": "nibabel>=5.0",
    "safetensors": "safetensors>=0.4",
    "platformdirs": "platformdirs>=3.0",
    "tqdm": "tqdm>=4.60",
}
# Slicer bundles numpy, SimpleITK and vtk; torch is installed separately (CUDA-specific builds).


class DependencyError(RuntimeError):
    """The user declined, or an installation failed; the message says what to do."""


def missing_packages() -> list[str]:
    """Import names of the engine's dependencies that are not installed (torch first)."""
    names = ["torch", *REQUIREMENTS]
    return [name for name in names if importlib.util.find_spec(name) is None]


def ensure_dependencies(ask: bool = True) -> None:
    """Install what is missing (asking first when ``ask``); raises :class:`DependencyError` otherwise."""
    missing = missing_packages()
    if not missing:
        return
    import slicer

    question = (
        "MedDDPM Synth needs these Python packages, which are not installed yet:\n\n  "
        + ", ".join(missing)
        + "\n\nInstall them now? PyTorch is a large download (up to a few GB with CUDA) and may take several "
        "minutes; Slicer may be unresponsive meanwhile."
    )
    if ask and not slicer.util.confirmOkCancelDisplay(question, "MedDDPM Synth: install dependencies"):
        raise DependencyError("the module needs " + ", ".join(missing) + "; click Generate again and accept the "
                              "installation, or install them from the Python console with slicer.util.pip_install")
    if "torch" in missing:
        _install_torch(slicer)
    requirements = [REQUIREMENTS[name] for name in missing if name in REQUIREMENTS]
    if requirements:
        _pip(slicer, requirements)
    still = missing_packages()
    if still:
        raise DependencyError(f"installing {', '.join(still)} failed; see the Python console, then restart Slicer "
                              "and try again")


def _install_torch(slicer) -> None:
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyError("PyTorch is missing and the PyTorch extension is not installed; install 'PyTorch' "
                              "from the Extensions Manager, restart Slicer and try again") from None
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if not logic.torchInstalled() and logic.installTorch(askConfirmation=False) is None:
        raise DependencyError("PyTorch could not be installed; install it in the 'PyTorch Util' module, then retry")


def _pip(slicer, requirements: list[str]) -> None:
    pydeps = getattr(slicer, "pydeps", None)
    if pydeps is not None and hasattr(pydeps, "pip_ensure"):
        from packaging.requirements import Requirement

        pydeps.pip_ensure([Requirement(r) for r in requirements], requester="MedDDPMSynth")
    else:
        slicer.util.pip_install(requirements)
