"""Every name a benchmark script (and the demo model's recipe) imports from the engine exists: the scripts
are not run by the suite, so a moved or renamed engine function would otherwise break them silently (as
``seam_score`` moving to ``training/evaluation`` broke ``bench_inpaint.py``)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPTS = sorted((REPO / "benchmarks").glob("*.py"))


def engine_imports(source: str) -> list[tuple[str, str]]:
    """(module, name) for every ``from MedDDPMSynthLib... import name`` (top level or inside a function)."""
    pairs = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "MedDDPMSynthLib":
            pairs += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            pairs += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] == "MedDDPMSynthLib"]
    return pairs


def _missing(pairs: list[tuple[str, str]]) -> list[str]:
    missing = []
    for module, name in pairs:
        try:
            imported = importlib.import_module(module)
        except ImportError as error:
            missing.append(f"{module} ({error})")
            continue
        if name and not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")  # a submodule
            except ImportError:
                missing.append(f"{module}.{name}")
    return missing


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_engine_name_a_benchmark_imports_exists(script):
    pairs = engine_imports(script.read_text())
    assert _missing(pairs) == []


def test_the_demo_model_recipe_imports_exist():
    recipe = (REPO / "MedDDPMSynth" / "Resources" / "Models" / "make_demo_model.sh").read_text()
    snippets = [block.split("\nPY", 1)[0] for block in recipe.split("<<'PY'\n")[1:]]  # its inline Python
    assert snippets and _missing([pair for code in snippets for pair in engine_imports(code)]) == []
