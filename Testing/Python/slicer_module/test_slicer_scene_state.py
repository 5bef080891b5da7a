"""The scene logic on real vtkMRMLScenes where the audit of the Slicer module found wrong results:
Undo/Regenerate state across Close Scene and node removal, the bounded undo history, Export (one case
per sample, no stale image/label pairs), parent transforms, and a missing engine interpreter."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from slicer_scene_helpers import add_segmentation, matrix, new_scene, slicer, standard_head
from slicer_scene_helpers import NAMES, fast  # the tiny model as "tiny16": conftest's model_home

from MedDDPMSynthLib.errors import InputError, MedDDPMError
from MedDDPMSynthSlicerLib import SceneLogic, process
from MedDDPMSynthSlicerLib.logic import UNDO_DEPTH

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)


def test_close_scene_forgets_undo_and_regenerate(model_home, tmp_path):  # noqa: F811
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("LPS"), NAMES)
    logic = SceneLogic(scene, temp_dir=tmp_path)
    [volume] = logic.generate(segmentation, fast())
    logic.shift_tumour(segmentation, [4.0, 0.0, 0.0])
    assert logic.can_undo(segmentation) and logic.can_regenerate(segmentation)
    old_ids = segmentation.GetID(), volume.GetID()

    scene.Clear(0)  # File > Close Scene: node IDs start again (vtkMRMLScene::Clear)
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    labels = standard_head()
    again, _ = add_segmentation(scene, labels, matrix("LPS"), NAMES)
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "a user's MRI")
    assert (again.GetID(), other.GetID()) == old_ids  # the same IDs name other nodes now
    assert not logic.can_undo(again) and not logic.undo_tumour_edit(again)
    assert not logic.can_regenerate(again)
    with pytest.raises(InputError, match="click Generate first"):
        logic.start_regeneration(again, fast())
    np.testing.assert_array_equal(logic.label_array(again)[0], labels.transpose(2, 1, 0))  # untouched


def test_removing_the_result_or_the_segmentation_forgets_it(model_home, tmp_path):  # noqa: F811
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("LPS"), NAMES)
    logic = SceneLogic(scene, temp_dir=tmp_path)
    [volume] = logic.generate(segmentation, fast())
    scene.RemoveNode(volume)
    assert not logic.can_regenerate(segmentation)
    logic.shift_tumour(segmentation, [4.0, 0.0, 0.0])
    scene.RemoveNode(segmentation)
    again, _ = add_segmentation(scene, standard_head(), matrix("LPS"), NAMES, name="again")
    assert not logic.can_undo(again) and logic._undo == {} and logic._last == {}


def test_undo_history_is_bounded():
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("LPS"), NAMES)
    logic = SceneLogic(scene)
    for n in range(UNDO_DEPTH + 2):
        logic.shift_tumour(segmentation, [4.0 if n % 2 else -4.0, 0.0, 0.0])
    undone = 0
    while logic.undo_tumour_edit(segmentation):
        undone += 1
    assert undone == UNDO_DEPTH


def test_undo_removes_the_layers_an_edit_had_to_add():
    scene = new_scene()
    labels = np.where(standard_head() > 0, 4, 0)
    labels[standard_head() == 2] = 1  # BraTS with only brain and necrotic core: no oedema, no enhancing
    segmentation, _ = add_segmentation(scene, labels, matrix("LPS"), {4: "brain", 1: "necrotic"})
    logic = SceneLogic(scene)
    logic.shift_tumour(segmentation, [4.0, 0.0, 0.0], family="brats")
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 4
    assert logic.undo_tumour_edit(segmentation)
    names = {segmentation.GetSegmentation().GetNthSegment(n).GetName() for n in range(2)}
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2 and names == {"brain", "necrotic"}


def test_export_writes_one_case_per_sample_and_refuses_an_edited_label(model_home, tmp_path):  # noqa: F811
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("LPS"), NAMES)
    logic = SceneLogic(scene, temp_dir=tmp_path / "jobs")
    nodes = logic.generate(segmentation, fast(samples=2, seed=4))
    dataset = tmp_path / "Dataset501"
    files = logic.export_training_pair(nodes, segmentation, dataset, case_id="synth")
    names = sorted(str(p.relative_to(dataset)) for p in files)
    assert names == ["dataset.json", "imagesTr/synth_000_0000.nii.gz", "imagesTr/synth_001_0000.nii.gz",
                     "labelsTr/synth_000.nii.gz", "labelsTr/synth_001.nii.gz", "provenance/synth_000.json",
                     "provenance/synth_001.json"]
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1c"} and meta["numTraining"] == 2
    seeds = [json.loads((dataset / f"provenance/synth_00{n}.json").read_text())["images"][0]["seed"] for n in (0, 1)]
    assert seeds == ["4", "5"]

    # the same sample twice as channels of one case is refused (a second Generate's volumes are other cases)
    with pytest.raises(InputError, match="both the t1c channel of one case"):
        logic.export_training_pair([nodes[0], nodes[0]], segmentation, tmp_path / "other")

    logic.shift_tumour(segmentation, [4.0, 0.0, 0.0])  # edited after generation: image and label differ
    with pytest.raises(InputError, match="edited after .* was generated"):
        logic.export_training_pair(nodes[:1], segmentation, tmp_path / "stale")
    assert not (tmp_path / "stale").exists()
    assert logic.undo_tumour_edit(segmentation)
    logic.export_training_pair(nodes[:1], segmentation, tmp_path / "undone")  # the mask it was made from


def test_regenerated_volume_pairs_with_the_edited_label(model_home, tmp_path):  # noqa: F811
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("LPS"), NAMES)
    logic = SceneLogic(scene, temp_dir=tmp_path / "jobs")
    nodes = logic.generate(segmentation, fast())
    logic.shift_tumour(segmentation, [4.0, 0.0, 0.0])
    logic.regenerate(segmentation, fast(harmonize=1))
    files = logic.export_training_pair(nodes, segmentation, tmp_path / "ds", case_id="edited")
    assert len(files) == 4


def test_transformed_inputs_are_refused_with_a_clear_message(tmp_path):
    scene = new_scene()
    segmentation, reference = add_segmentation(scene, standard_head(), matrix("LPS"), NAMES)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    logic = SceneLogic(scene, temp_dir=tmp_path)
    for node in (segmentation, reference):
        node.SetAndObserveTransformNodeID(transform.GetID())
        before = scene.GetNumberOfNodes()
        with pytest.raises(InputError, match=f"'{node.GetName()}' is under the transform 'registration'; harden"):
            logic.label_array(segmentation, reference)
        with pytest.raises(InputError, match="harden the transform"):
            logic.shift_tumour(segmentation, [4.0, 0.0, 0.0], reference_volume=reference)
        assert scene.GetNumberOfNodes() == before and not logic.can_undo(segmentation)
        node.SetAndObserveTransformNodeID(None)
    assert logic.label_array(segmentation, reference)[0].any()


def test_no_interpreter_is_one_clear_message(model_home, tmp_path, monkeypatch):  # noqa: F811
    """Slicer without its launcher: sys.executable is '' and PythonSlicer is not on PATH."""
    scene = new_scene()
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("LPS"), NAMES)
    logic = SceneLogic(scene, temp_dir=tmp_path / "jobs")
    before = scene.GetNumberOfNodes()
    monkeypatch.setattr(sys, "executable", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MedDDPMError, match="cannot start the engine .*PythonSlicer is not on PATH"):
        logic.start_generation(segmentation, fast())
    assert scene.GetNumberOfNodes() == before and list((tmp_path / "jobs").iterdir()) == []


def test_engine_process_options_hide_the_windows_console_and_use_utf8():
    windows = process.process_options("nt")
    assert windows["creationflags"] & 0x08000000 and windows["creationflags"] & 0x00000200  # NO_WINDOW, new group
    assert process.process_options("posix") == {"start_new_session": True}
    env = process.engine_environment({"PYTHONPATH": "elsewhere"})
    assert env["PYTHONIOENCODING"] == "utf-8" and env["PYTHONUTF8"] == "1"
    assert env["PYTHONPATH"].split(process.os.pathsep) == [str(process.ENGINE_PARENT), "elsewhere"]


def test_non_ascii_engine_messages_arrive_intact(tmp_path):
    missing = tmp_path / "Überprüfung ñ 検査" / "mask.nii.gz"
    engine = process.EngineProcess(["generate", "--mask", str(missing), "-o", str(tmp_path / "out")])
    assert engine.wait(timeout=120) == process.FAILED
    assert str(missing.parent.name) in engine.error
