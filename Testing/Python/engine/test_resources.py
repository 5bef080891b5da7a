"""The bundled demo model and example mask are found where each kind of install puts them: the source
tree, a pip wheel (non-editable, used from another folder) and the installed Slicer extension
(test_extension_install.py). No MEDDDPMSYNTH_DEMO_MODEL override here: "demo" is the bundled file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from MedDDPMSynthLib import resources
from MedDDPMSynthLib.store import models

from conftest import DEMO_ENV, REPO

MODULE_RESOURCES = REPO / "MedDDPMSynth" / "Resources"
BUNDLED = ["Models/demo_model.safetensors", "Models/demo_model.json", "Models/README.md",
           "Examples/demo_mask.nii.gz", "Examples/README.md"]


def isolated_python(path_entries, code: str, cwd) -> dict:
    """Run ``code`` in a fresh interpreter whose sys.path is ``path_entries`` + this venv's site-packages,
    without the editable install's finder (which would put the repository back on the path); the code
    prints one JSON line."""
    site_packages = sysconfig.get_paths()["purelib"]
    prelude = (
        "import sys\n"
        f"sys.path[:] = [p for p in sys.path if 'site-packages' not in p] + {[str(p) for p in path_entries]!r}"
        f" + [{site_packages!r}]\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (DEMO_ENV, "PYTHONPATH")}
    # -I: no user site, no PYTHONPATH, no script folder; -S: no site.py, so no .pth file (the editable finder)
    done = subprocess.run([sys.executable, "-I", "-S", "-c", prelude + code], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_source_tree_demo_is_the_module_resource(monkeypatch):
    monkeypatch.delenv(DEMO_ENV, raising=False)
    assert resources.demo_model_file() == MODULE_RESOURCES / "Models" / "demo_model.safetensors"
    assert resources.example_mask() == MODULE_RESOURCES / "Examples" / "demo_mask.nii.gz"
    assert models.demo_model_path() == models.BUNDLED_DEMO == resources.demo_model_file()
    entry = models.demo_entry()
    assert entry["available"] and entry["note"] == models.BUNDLED_NOTE and entry["family"] == "whole_head"
    assert models.resolve_model("demo") == resources.demo_model_file()


def test_missing_bundled_file_names_where_it_was_expected():
    missing = resources.bundled_file("Models", "no_such_model.safetensors")
    assert missing == resources.RESOURCE_DIRS[0] / "Models" / "no_such_model.safetensors"
    assert not missing.exists()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The pip wheel built from the checkout (as ``pip install .`` builds it), unpacked."""
    folder = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(folder), str(REPO)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [path] = folder.glob("medddpm_synth-*.whl")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        archive.extractall(folder / "site")
    return names, folder / "site"


def test_wheel_carries_the_demo_model_and_example_mask(wheel):
    names, _ = wheel
    for name in BUNDLED:
        assert f"MedDDPMSynthLib/Resources/{name}" in names
    assert not any(n.startswith("Resources/") for n in names)  # nothing spilled into site-packages itself
    assert {"MedDDPMSynthLib/resources.py", "MedDDPMSynthSlicerLib/logic.py", "MedDDPMSynthWeb/app.py"} <= set(names)
    assert not any("Icons" in n or n.endswith(".ui") for n in names)  # the Slicer-only files stay out


def test_demo_resolves_from_the_unpacked_wheel_in_another_folder(wheel, tmp_path):
    _, site = wheel
    found = isolated_python([site], (
        "import json, MedDDPMSynthLib\n"
        "from MedDDPMSynthLib import resources\nfrom MedDDPMSynthLib.store import models\n"
        "entry = models.demo_entry()\n"
        "print(json.dumps({'package': MedDDPMSynthLib.__file__, 'demo': str(models.resolve_model('demo')),\n"
        "                  'mask': str(resources.example_mask()), 'available': entry['available'],\n"
        "                  'sha256': entry.get('sha256'), 'family': entry.get('family')}))\n"), cwd=tmp_path)
    package = site / "MedDDPMSynthLib"
    assert found["package"] == str(package / "__init__.py")
    assert found["demo"] == str(package / "Resources" / "Models" / "demo_model.safetensors")
    assert found["mask"] == str(package / "Resources" / "Examples" / "demo_mask.nii.gz")
    card = json.loads((MODULE_RESOURCES / "Models" / "demo_model.json").read_text())
    assert found["available"] and found["family"] == "whole_head" and found["sha256"] == card["sha256"]
