"""Files shipped with MedDDPMSynth (the demo model, the example mask), wherever it is installed.

They live in the Slicer module's own ``Resources`` folder, beside the engine package, and reach users
three ways, each with its own layout:

* source tree and installed Slicer extension: ``<folder holding MedDDPMSynthLib>/Resources/...``
  (``MedDDPMSynth/Resources`` in the checkout; ``<extension>/lib/Slicer-X.Y/qt-scripted-modules/Resources``
  once Slicer's CMake macros have installed the module, where only ``qt-scripted-modules`` is installed);
* pip wheel / sdist: ``<site-packages>/MedDDPMSynthLib/Resources/...`` (``pyproject.toml`` maps the same
  folder into the package, so the wheel does not spill a top-level ``Resources`` into site-packages).

This module imports nothing heavy (no torch): the Slicer module uses it before the dependencies exist.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: where each layout keeps the resources, the first that holds the file wins
RESOURCE_DIRS = (PACKAGE_DIR.parent / "Resources", PACKAGE_DIR / "Resources")

DEMO_MODEL = ("Models", "demo_model.safetensors")
EXAMPLE_MASK = ("Examples", "demo_mask.nii.gz")


def bundled_file(*parts: str) -> Path:
    """The bundled file ``Resources/<parts>`` of whichever layout holds it; when none does, the path of
    the first layout (so a message can say where it was expected)."""
    candidates = [folder.joinpath(*parts) for folder in RESOURCE_DIRS]
    return next((path for path in candidates if path.is_file()), candidates[0])


def demo_model_file() -> Path:
    """The bundled demo model (``--model demo``; ``MEDDDPMSYNTH_DEMO_MODEL`` may override it, see models)."""
    return bundled_file(*DEMO_MODEL)


def example_mask() -> Path:
    """The bundled example mask (brain 1, tumour 2, MNI space): the README's main command, the self-test."""
    return bundled_file(*EXAMPLE_MASK)
