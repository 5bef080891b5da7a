"""The Slicer module file and extension files: MedDDPMSynth.py imports under Slicer's Python layout (the
application-only modules stood in for by minimal stand-ins; slicer-core's real `slicer` package and
MRML otherwise), its logic offers the scene logic's methods, and the build files list every file."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import types
import unittest
import xml.etree.ElementTree as ET

from pathlib import Path

import numpy as np
import pytest
from slicer_scene_helpers import MODULE_DIR, REPO, add_segmentation, matrix, new_scene, slicer, standard_head

import MedDDPMSynthSlicerLib
from MedDDPMSynthSlicerLib import SceneLogic

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)


class _Base:
    def __init__(self, *args, **kwargs):
        pass


class _Parent:
    def __init__(self):
        self.connections = []


@pytest.fixture()
def module(monkeypatch, tmp_path):
    """Import MedDDPMSynth.py as Slicer does, with the application's own modules stood in for."""
    scene = new_scene()
    app = types.SimpleNamespace(temporaryPath=str(tmp_path), testingEnabled=lambda: True,
                                connect=lambda signal, slot: app.connected.append((signal, slot)), connected=[])
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleWidget"):
        setattr(scripted, name, type(name, (_Base,), {}))
    # as in Slicer: a unittest.TestCase (runUnitTest runs its test_* methods)
    scripted.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (unittest.TestCase,),
                                               {"delayDisplay": lambda self, message: None})
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    spec = importlib.util.spec_from_file_location("MedDDPMSynth", MODULE_DIR / "MedDDPMSynth.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded, scene, app


def test_module_file_imports_and_describes_the_module(module):
    loaded, _, app = module
    info = loaded.MedDDPMSynth.__new__(loaded.MedDDPMSynth)
    info.parent = types.SimpleNamespace()
    loaded.MedDDPMSynth.__init__(info, info.parent)
    assert info.parent.title == "MedDDPM Synth" and info.parent.categories == ["Image Synthesis"]
    assert "Conditional Diffusion Models for Semantic 3D Brain MRI Synthesis" in info.parent.acknowledgementText
    assert ("startupCompleted()", loaded.registerSampleData) in app.connected
    example = REPO / "MedDDPMSynth" / "Resources" / "Examples" / "demo_mask.nii.gz"
    assert hashlib.sha256(example.read_bytes()).hexdigest() == loaded.EXAMPLE_MASK_SHA256
    assert loaded.exampleMaskPath() == str(example)
    for name in ("MedDDPMSynthWidget", "MedDDPMSynthLogic", "MedDDPMSynthTest"):
        assert hasattr(loaded, name)


def test_module_logic_is_the_scene_logic_on_slicers_scene(module):
    loaded, scene, _ = module
    logic = loaded.MedDDPMSynthLogic()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("oblique"), {1: "head", 2: "tumour"})
    array, m = logic.label_array(segmentation)  # from the console: getModuleLogic("MedDDPMSynth").label_array
    np.testing.assert_array_equal(array, standard_head().transpose(2, 1, 0))
    np.testing.assert_allclose(m, matrix("oblique"), atol=1e-4)
    assert logic.sceneLogic.scene is scene and logic.ready
    with pytest.raises(AttributeError):
        logic.no_such_method  # noqa: B018  (unrelated lookups never trigger an installation)


def test_logic_method_list_matches_the_scene_logic():
    public = {n for n in dir(SceneLogic) if not n.startswith("_") and callable(getattr(SceneLogic, n))}
    assert public == set(MedDDPMSynthSlicerLib.LOGIC_METHODS)
    # identifiers say tumour; scripts written with the earlier spelling keep working (same methods)
    for old in ("shift_tumor", "scale_tumor", "rotate_tumor", "remove_tumor", "add_tumor", "undo_tumor_edit"):
        assert getattr(SceneLogic, old) is getattr(SceneLogic, old.replace("tumor", "tumour"))


def test_cmake_lists_every_slicer_file_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    for package in ("SlicerLib", "SlicerUI"):
        listed = set(re.findall(rf"\$\{{MODULE_NAME\}}{package}/(\w+\.py)", text))
        present = {p.name for p in (MODULE_DIR / f"MedDDPMSynth{package}").glob("*.py")}
        assert listed == present, package
    assert "GLOB_RECURSE MODULE_ENGINE_SCRIPTS" in text and "${MODULE_NAME}Lib/*.py" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui",
                     "Resources/Models/demo_model.safetensors", "Resources/Examples/demo_mask.nii.gz"):
        assert resource in text and (MODULE_DIR / resource.replace("${MODULE_NAME}", "MedDDPMSynth")).is_file()
    assert not re.search(r"^\s*\S*\.\./", text, re.M)  # CTK copies a "../" resource outside qt-scripted-modules, which is not installed
    top = (REPO / "CMakeLists.txt").read_text()
    assert 'set(EXTENSION_CATEGORY "Image Synthesis")' in top and 'set(EXTENSION_DEPENDS "PyTorch")' in top
    s4ext = dict(line.split(" ", 1) for line in (REPO / "MedDDPMSynth.s4ext").read_text().splitlines()
                 if line and not line.startswith("#"))
    entry = json.loads((REPO / "MedDDPMSynth.json").read_text())
    assert s4ext["category"] == entry["category"] == "Image Synthesis"
    assert s4ext["depends"] == "PyTorch" and entry["build_dependencies"] == ["PyTorch"]
    assert s4ext["scmurl"] == entry["scm_url"]
    # every file URL of the metadata (icon, screenshot) names a file of this repository
    urls = re.findall(r"https://raw\.githubusercontent\.com/\S+?/main/([^\s\"]+)", top + s4ext["iconurl"]
                      + " " + s4ext["screenshoturls"])
    assert len(urls) == 4 and all((REPO / path).is_file() for path in urls), urls


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "MedDDPMSynth.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)


def test_ui_has_every_widget_the_widget_code_uses():
    tree = ET.parse(MODULE_DIR / "Resources" / "UI" / "MedDDPMSynth.ui")
    names = {w.get("name") for w in tree.iter("widget")}
    code = (MODULE_DIR / "MedDDPMSynthSlicerUI" / "widget.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", code)) | set(re.findall(r'"(\w+(?:ComboBox|Button))"', code))
    used |= {f"shift{n}Button" for n in ("Right", "Left", "Anterior", "Posterior", "Superior", "Inferior")}
    assert used - names == set()
    bound = {p.find("string").text for p in tree.iter("property") if p.get("name") == "SlicerParameterName"}
    fields = set(re.findall(r"^    (\w+): ", (MODULE_DIR / "MedDDPMSynthSlicerUI" / "parameters.py").read_text(), re.M))
    assert bound <= fields and {"segmentation", "samples", "seed", "preset", "scaleFactor"} <= bound
    export = next(w for w in tree.iter("widget") if w.get("name") == "exportVolumesComboBox")
    shown = {p.get("name"): p.find("bool").text for p in export.findall("property") if p.find("bool") is not None}
    assert shown["showChildNodeTypes"] == "false"  # no label maps (vtkMRMLLabelMapVolumeNode is a scalar volume)
    for widget in tree.iter("widget"):
        if widget.get("class") == "QPushButton":
            assert any(p.get("name") == "toolTip" for p in widget.findall("property")), widget.get("name")


def test_dependencies_are_installed_only_after_the_user_agrees(monkeypatch):
    from MedDDPMSynthSlicerUI import dependencies

    installed = {"tqdm": False, "torch": False}
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(dependencies.importlib.util, "find_spec",
                        lambda name: None if installed.get(name) is False else real_find_spec(name))
    assert dependencies.missing_packages() == ["torch", "tqdm"]
    answers, pip_calls, torch_calls = [], [], []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, title: answers.pop(0))
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements: pip_calls.append(requirements))
    monkeypatch.delattr(slicer, "pydeps", raising=False)

    class PyTorchUtilsLogic:
        def torchInstalled(self):
            return False

        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            torch_calls.append((askConfirmation, torchVersionRequirement))
            installed["torch"] = True
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    answers.append(False)
    with pytest.raises(dependencies.DependencyError, match="the module needs torch, tqdm; click Generate again"):
        dependencies.ensure_dependencies()
    assert pip_calls == [] and torch_calls == []
    answers.append(True)
    with pytest.raises(dependencies.DependencyError, match="installing tqdm failed"):  # pip "ran" but tqdm is still missing
        dependencies.ensure_dependencies()
    assert torch_calls == [(False, ">=2.0,<2.13")] and pip_calls == [["tqdm>=4.60"]]
    installed["tqdm"] = True
    dependencies.ensure_dependencies()  # nothing missing: no question asked


def test_example_mask_is_registered_from_the_installed_copy(module, monkeypatch):
    loaded, _, _ = module
    calls = []
    sample_data = types.ModuleType("SampleData")
    sample_data.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: calls.append(kw))
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)
    loaded.registerSampleData()
    [call] = calls
    assert call["uris"].startswith("file:") and call["loadFileTypes"] == "SegmentationFile"
    path = loaded.exampleMaskPath()
    assert call["uris"] == Path(path).as_uri()  # no network, no unpublished URL
    assert call["checksums"] == "SHA256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_self_test_skips_instead_of_installing_in_testing_mode(module, monkeypatch):
    loaded, _, _ = module
    from MedDDPMSynthSlicerUI import dependencies

    monkeypatch.setattr(dependencies, "missing_packages", lambda: ["torch", "tqdm"])
    monkeypatch.setattr(dependencies, "ensure_dependencies", lambda ask=True: pytest.fail("installs in testing mode"))
    result = unittest.TestResult()
    loaded.MedDDPMSynthTest("test_MedDDPMSynth_generate_edit_export").run(result)
    assert result.errors == [] and result.failures == []
    [(_, reason)] = result.skipped
    assert "torch, tqdm missing" in reason


def test_torch_bounds_and_installer_failures_are_user_errors(monkeypatch, tmp_path):
    from MedDDPMSynthSlicerUI import dependencies

    monkeypatch.setattr(dependencies, "missing_packages", lambda: ["tqdm"])
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, title: True)

    def failing_pip(requirements):  # what slicer.util.pip_install raises when pip fails (no network)
        raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", *requirements])

    monkeypatch.setattr(slicer.util, "pip_install", failing_pip)
    with pytest.raises(dependencies.DependencyError, match="installing tqdm failed .CalledProcessError.*check the network"):
        dependencies.ensure_dependencies()

    monkeypatch.setattr(dependencies, "missing_packages", lambda: [])
    monkeypatch.setattr(dependencies, "torch_version", lambda name="torch": "1.13.1+cpu")  # left by another extension
    with pytest.raises(dependencies.DependencyError, match=r"PyTorch 1.13.1\+cpu is installed, but MedDDPM Synth needs "
                                                           r"torch>=2.0,<2.13"):
        dependencies.ensure_dependencies()
    monkeypatch.setattr(dependencies, "torch_version", lambda name="torch": "2.13.0")  # newer than installed: used
    assert dependencies.torch_problem() is None

    broken = tmp_path / "brokentorch"  # installed, but its DLLs do not load (the Windows WinError 126 case)
    broken.mkdir()
    (broken / "__init__.py").write_text("raise OSError('[WinError 126] The specified module could not be found: c10.dll')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(dependencies, "torch_version", lambda name="torch": None)
    assert dependencies.torch_problem("brokentorch") == (
        "PyTorch (unknown version) is installed but cannot be imported (OSError: [WinError 126] The specified module "
        "could not be found: c10.dll); reinstall it in the 'PyTorch Util' module and restart Slicer")


def test_pip_ensure_is_used_where_slicer_has_it(monkeypatch):
    from packaging.requirements import Requirement

    from MedDDPMSynthSlicerUI import dependencies

    calls = []
    packaging_module = types.ModuleType("slicer.packaging")
    packaging_module.pip_ensure = lambda requirements, **kw: calls.append((requirements, kw))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging_module)
    dependencies._pip(slicer, ["tqdm>=4.60"])
    [(requirements, options)] = calls
    assert requirements == [Requirement("tqdm>=4.60")]
    assert options == {"prompt_install": False, "requester": "MedDDPMSynth"}


def test_broken_engine_import_leaves_the_logic_usable_and_says_why(module, monkeypatch):
    loaded, _, _ = module
    from MedDDPMSynthSlicerUI import dependencies

    logic = loaded.MedDDPMSynthLogic()
    real = dependencies.torch_problem
    monkeypatch.setattr(dependencies, "torch_problem", lambda name="torch": "PyTorch 2.1 cannot be imported (OSError)")
    assert logic.ready is False and logic.notReadyReason == "PyTorch 2.1 cannot be imported (OSError)"
    monkeypatch.setattr(dependencies, "torch_problem", real)

    import MedDDPMSynthSlicerLib.logic as scene_logic

    def broken(*args, **kwargs):  # e.g. an engine module that needs a newer torch API
        raise AttributeError("module 'torch.nn.functional' has no attribute 'scaled_dot_product_attention'")

    monkeypatch.setattr(scene_logic, "SceneLogic", broken)
    with pytest.raises(RuntimeError, match="scaled_dot_product_attention"):  # not "...has no attribute 'sceneLogic'"
        logic.label_array(None)
