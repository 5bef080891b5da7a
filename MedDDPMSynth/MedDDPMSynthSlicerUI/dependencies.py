"""First-use installation of the engine's Python dependencies inside Slicer, after the user agrees.

PyTorch comes from the PyTorch extension's ``PyTorchUtils`` (it picks the build for the computer's CUDA),
within :data:`TORCH_REQUIREMENT`; the rest through ``slicer.packaging.pip_ensure`` (Slicer >= 5.12) or
``slicer.util.pip_install`` (5.8 - 5.11). Nothing here imports the engine; :func:`missing_packages` is
plain Python and :func:`torch_problem` imports only torch, inside ``try``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import subprocess

#: import name -> pip requirement (the engine's dependencies that Slicer does not bundle)
REQUIREMENTS = {
    "nibabel": "nibabel>=5.0",
    "safetensors": "safetensors>=0.4",
    "platformdirs": "platformdirs>=3.0",
    "tqdm": "tqdm>=4.60",
}
# Slicer bundles numpy, SimpleITK and vtk; torch is installed separately (CUDA-specific builds).

#: torch for the engine: >= 2.0 for F.scaled_dot_product_attention (unet.py); < 2.13 because a fresh
#: torch 2.13 install breaks Slicer (Slicer/light-the-torch#176: its PEP 639 license files). The engine's
#: CI runs 2.13 (pyproject.toml), so an already-installed torch at or above the upper bound is used as it is;
#: one below the lower bound, or one that does not import, is refused with a message (torch_problem).
TORCH_REQUIREMENT = ">=2.0,<2.13"
TORCH_MINIMUM = (2, 0)
#: what an installer can raise: pip's CalledProcessError (slicer.util._executePythonModule), PyTorchUtils'
#: RuntimeError / OSError (no network, disk full)
INSTALL_ERRORS = (subprocess.CalledProcessError, RuntimeError, OSError)


class DependencyError(RuntimeError):
    """The user declined, or an installation failed; the message says what to do."""


def missing_packages() -> list[str]:
    """Import names of the engine's dependencies that are not installed (torch first)."""
    names = ["torch", *REQUIREMENTS]
    return [name for name in names if importlib.util.find_spec(name) is None]


def _version_tuple(text: str) -> tuple[int, int]:
    numbers = [int(n) for n in re.findall(r"\d+", text.split("+")[0])[:2]]
    return tuple(numbers + [0] * (2 - len(numbers)))  # type: ignore[return-value]


def torch_version(name: str = "torch") -> str | None:
    """The installed torch's version, read from its metadata (without importing it); None if absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_problem(name: str = "torch") -> str | None:
    """Why the installed torch cannot run the engine (too old, or it does not import); None when it can
    or when torch is simply not installed (:func:`ensure_dependencies` installs it then). ``name``: the
    import name, for tests."""
    if importlib.util.find_spec(name) is None:
        return None
    version = torch_version(name) or "(unknown version)"
    if torch_version(name) and _version_tuple(version) < TORCH_MINIMUM:
        return (f"PyTorch {version} is installed, but MedDDPM Synth needs torch{TORCH_REQUIREMENT}; update it in "
                "the 'PyTorch Util' module (or uninstall it there) and restart Slicer")
    try:
        importlib.import_module(name)
    except Exception as error:  # e.g. Windows "OSError: [WinError 126] ... c10.dll": a broken install
        return (f"PyTorch {version} is installed but cannot be imported ({type(error).__name__}: {error}); "
                "reinstall it in the 'PyTorch Util' module and restart Slicer")
    return None


def ensure_dependencies(ask: bool = True) -> None:
    """Install what is missing (asking first when ``ask``); raises :class:`DependencyError` otherwise."""
    missing = missing_packages()
    if not missing:
        problem = torch_problem()
        if problem:
            raise DependencyError(problem)
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
    try:
        if "torch" in missing:
            _install_torch(slicer)
        requirements = [REQUIREMENTS[name] for name in missing if name in REQUIREMENTS]
        if requirements:
            _pip(slicer, requirements)
    except DependencyError:
        raise
    except INSTALL_ERRORS as error:  # a user's problem (network, disk, proxy), not a bug: no traceback
        raise DependencyError(f"installing {', '.join(missing)} failed ({type(error).__name__}: {error}); check the "
                              "network connection and the Python console, then restart Slicer and try again") from error
    still = missing_packages()
    if still:
        raise DependencyError(f"installing {', '.join(still)} failed; see the Python console, then restart Slicer "
                              "and try again")
    problem = torch_problem()
    if problem:
        raise DependencyError(problem)


def _install_torch(slicer) -> None:
    try:
        import PyTorchUtils
    except ImportError:
        raise DependencyError("PyTorch is missing and the PyTorch extension is not installed; install 'PyTorch' "
                              "from the Extensions Manager, restart Slicer and try again") from None
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if not logic.torchInstalled() and logic.installTorch(
            askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
        raise DependencyError("PyTorch could not be installed; install it in the 'PyTorch Util' module, then retry")


def _pip(slicer, requirements: list[str]) -> None:
    """``slicer.packaging.pip_ensure`` where it exists (Slicer >= 5.12), else ``slicer.util.pip_install``."""
    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        from packaging.requirements import Requirement

        # the user has agreed already (ensure_dependencies asked): no second dialog
        packaging.pip_ensure([Requirement(r) for r in requirements], prompt_install=False, requester="MedDDPMSynth")
    else:
        slicer.util.pip_install(requirements)
