"""The layers import only downwards: engine <- MRML scene logic <- fronts (Qt panel, web). Every .py file of
each package is parsed and every import in it (top level or inside a function) is checked, so a lazy
import of a front from the engine, or of Qt from the MRML-only package, fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "MedDDPMSynth"
FRONTS = {"MedDDPMSynthWeb", "MedDDPMSynthSlicerUI", "trame", "trame_slicer", "trame_client", "trame_server",
          "aiohttp", "wslink"}
QT = {"qt", "ctk", "PythonQt", "slicer.util", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper",
      "slicer.i18n"}  # the application's Qt side (slicer-core's MRML classes under "slicer" are fine)
FORBIDDEN = {
    # the engine: no front, no scene logic, nothing of Slicer, VTK or Qt
    "MedDDPMSynthLib": FRONTS | QT | {"MedDDPMSynthSlicerLib", "slicer", "vtk", "vtkmodules", "MRMLCorePython"},
    # the MRML-only scene logic: no Qt, no front above it
    "MedDDPMSynthSlicerLib": FRONTS | QT,
    # the web front: no Qt panel
    "MedDDPMSynthWeb": QT | {"MedDDPMSynthSlicerUI"},
}


def imported_modules(source: str, package: str, path: Path) -> set[str]:
    """Every module an import statement in ``source`` names (relative imports resolved within ``package``)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside this package, whatever the depth
                parts = [package, *path.parent.relative_to(MODULE_DIR / package).parts]
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def violations(modules: set[str], forbidden: set[str]) -> list[str]:
    return sorted(m for m in modules for f in forbidden if m == f or m.startswith(f"{f}."))


def test_the_walker_sees_lazy_and_relative_imports():
    source = "def run():\n    from MedDDPMSynthWeb import app\n    import qt\nfrom .errors import InputError\n"
    found = imported_modules(source, "MedDDPMSynthLib", MODULE_DIR / "MedDDPMSynthLib" / "cli.py")
    assert "MedDDPMSynthLib.errors" in found
    assert violations(found, FORBIDDEN["MedDDPMSynthLib"]) == ["MedDDPMSynthWeb", "MedDDPMSynthWeb.app", "qt"]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_no_layer_above_it(package):
    files = sorted((MODULE_DIR / package).rglob("*.py"))
    assert files
    found = {}
    for path in files:
        bad = violations(imported_modules(path.read_text(encoding="utf-8"), package, path), FORBIDDEN[package])
        if bad:
            found[str(path.relative_to(MODULE_DIR))] = bad
    assert found == {}
