"""The Slicer extension as users install it: Slicer's and CTK's own CMake macros configure, build and
install MedDDPMSynth/CMakeLists.txt (Testing/SlicerExtensionCheck/install-tree.sh, the 5.8 and 5.10
layouts); the installed tree holds the module, engine, scene logic, UI, icon, demo model and example mask;
and, imported from that tree alone (no repository on sys.path, no MEDDDPMSYNTH_DEMO_MODEL), "demo"
resolves to the installed model and generates a volume on a real vtkMRMLScene from the installed mask."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import DEMO_ENV, REPO

MODULE_DIR = REPO / "MedDDPMSynth"
INSTALL_TREE = REPO / "Testing" / "SlicerExtensionCheck" / "install-tree.sh"
SITE_PACKAGES = sysconfig.get_paths()["purelib"]


def _environment() -> dict:
    """This environment without the demo override or PYTHONPATH, with the venv's bin (pip's cmake) on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in (DEMO_ENV, "PYTHONPATH")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.fixture(scope="module", params=["5.8", "5.10"])
def installed(request, tmp_path_factory):
    """(list of installed files, the installed qt-scripted-modules folder) for one Slicer version."""
    env = _environment()
    if shutil.which("cmake", path=env["PATH"]) is None:
        if os.environ.get("CI") == "true":
            pytest.fail("cmake is needed for the installed-extension test (pip install -e .[test] installs it)")
        pytest.skip("cmake is not installed (pip install cmake)")
    version = request.param
    tree = tmp_path_factory.mktemp(f"slicer-{version}")
    done = subprocess.run(["bash", str(INSTALL_TREE), str(REPO), version], capture_output=True, text=True,
                          env={**env, "INSTALL_TREE_KEEP": str(tree)}, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    listed = done.stdout.split()
    return version, listed, tree / "lib" / f"Slicer-{version}" / "qt-scripted-modules"


def test_installed_tree_holds_the_module_and_its_data(installed):
    version, listed, folder = installed
    prefix = f"lib/Slicer-{version}/qt-scripted-modules/"
    assert listed and all(name.startswith(prefix) for name in listed)  # nothing outside qt-scripted-modules
    files = {name[len(prefix):] for name in listed}
    expected = {"MedDDPMSynth.py", "Resources/UI/MedDDPMSynth.ui", "Resources/Icons/MedDDPMSynth.png",
                "Resources/Models/demo_model.safetensors", "Resources/Examples/demo_mask.nii.gz",
                "Resources/Examples/README.md"}  # the mask's template licence travels with it
    for package in ("MedDDPMSynthLib", "MedDDPMSynthSlicerLib", "MedDDPMSynthSlicerUI"):
        expected |= {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / package).rglob("*.py")}
    assert expected - files == set()
    for name in expected:  # installed as they are in the checkout
        assert (folder / name).read_bytes() == (MODULE_DIR / name).read_bytes(), name


ISOLATED = r"""
import json, sys
sys.path[:] = [p for p in sys.path if "site-packages" not in p] + [sys.argv[1], sys.argv[2]]
import numpy as np
import SimpleITK as sitk
import slicer
import MedDDPMSynthLib, MedDDPMSynthSlicerLib
from MedDDPMSynthLib import resources
from MedDDPMSynthLib.store import models
from MedDDPMSynthSlicerLib import GenerationSettings, SceneLogic
from MedDDPMSynthSlicerLib.scene_io import array_from_node, ijk_to_ras

scene = slicer.vtkMRMLScene()
slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
mask = resources.example_mask()
# the installed example mask read the way Slicer's SegmentationFile reader does
segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "demo_mask")
storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
storage.SetFileName(str(mask))
segmentation.SetAndObserveStorageNodeID(storage.GetID())
assert storage.ReadData(segmentation)
logic = SceneLogic(scene, temp_dir=sys.argv[3], python=sys.argv[4])
logic.name_segments_by_label(segmentation)
labels, matrix = logic.label_array(segmentation)
settings = GenerationSettings(model="demo", sampler="ddim", steps=2, device="cpu")
[volume] = logic.generate(segmentation, settings)
image = volume.GetImageData()
print("RESULT " + json.dumps({
    "engine": MedDDPMSynthLib.__file__, "scene_logic": MedDDPMSynthSlicerLib.__file__,
    "demo": str(models.resolve_model("demo")), "note": models.demo_entry()["note"], "mask": str(mask),
    "labels": sorted(np.unique(labels).tolist()), "mask_shape": list(sitk.ReadImage(str(mask)).GetSize()),
    "mask_matrix": matrix.tolist(), "volume_dims": list(image.GetDimensions()),
    "volume_matrix": ijk_to_ras(volume).tolist(), "volume_model": volume.GetAttribute("MedDDPMSynth.model"),
    "finite": bool(np.isfinite(array_from_node(volume)).all()),
}))
"""


def test_demo_generates_from_the_installed_tree_alone(installed, tmp_path):
    _, _, folder = installed
    # the engine process: this venv's Python without site.py (so without the editable install's finder,
    # which would bring the repository back), the venv's packages after the installed tree
    launcher = tmp_path / "python-no-site"
    launcher.write_text(f'#!/bin/sh\nexport PYTHONPATH="$PYTHONPATH{os.pathsep}{SITE_PACKAGES}"\n'
                        f'echo "$PYTHONPATH" >> "{tmp_path}/engine-path.log"\nexec "{sys.executable}" -S "$@"\n')
    launcher.chmod(0o755)
    home = tmp_path / "home"  # an empty model catalogue: "demo" can only be the bundled model
    env = {**_environment(), "MEDDDPMSYNTH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    work = tmp_path / "work"
    work.mkdir()
    # -I: no user site, no PYTHONPATH, not the script's folder; -S: no site.py, hence no .pth file
    done = subprocess.run([sys.executable, "-I", "-S", "-c", ISOLATED, str(folder), SITE_PACKAGES,
                           str(tmp_path / "temp"), str(launcher)],
                          capture_output=True, text=True, cwd=work, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]  # VTK may print too
    found = json.loads(line[len("RESULT "):])
    assert found["engine"] == str(folder / "MedDDPMSynthLib" / "__init__.py")
    assert found["scene_logic"] == str(folder / "MedDDPMSynthSlicerLib" / "__init__.py")
    assert found["demo"] == str(folder / "Resources" / "Models" / "demo_model.safetensors")
    assert found["note"] == "bundled demo model"
    assert found["mask"] == str(folder / "Resources" / "Examples" / "demo_mask.nii.gz")
    assert found["labels"] == [0, 1, 2]
    # the result lies on the mask's own grid
    assert found["volume_dims"] == found["mask_shape"] and found["volume_model"] == "demo" and found["finite"]
    assert max(abs(a - b) for ra, rb in zip(found["volume_matrix"], found["mask_matrix"])
               for a, b in zip(ra, rb)) < 1e-4
    # and the engine process, too, ran from the installed tree
    first = (tmp_path / "engine-path.log").read_text().splitlines()[0].split(os.pathsep)[0]
    assert first == str(folder)
