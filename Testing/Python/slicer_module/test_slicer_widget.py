"""The panel's controller is a thin shell: its buttons drive the real scene logic on a real vtkMRMLScene.

Qt is not available here, so the few Qt objects the controller touches (a timer, widgets with a value,
an enabled flag and a tooltip) are stood in for; the background process, the scene and the engine are real.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import time
import types

import pytest
from slicer_scene_helpers import add_segmentation, matrix, new_scene, slicer, standard_head

from MedDDPMSynthSlicerLib import SceneLogic

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)


class Signal:
    def __init__(self):
        self.slots = []

    def __call__(self, *args):
        for slot in self.slots:  # like PythonQt: a slot taking fewer arguments gets the first ones
            try:
                inspect.signature(slot).bind(*args)
            except TypeError:
                args = args[:0]
            slot(*args)


class FakeWidget:
    """enabled / toolTip / text / value, Qt-style ``connect(signal, slot)`` and ``click()``."""

    def __init__(self, name):
        self.name, self.enabled, self.toolTip, self.text, self.value = name, True, "", "", 0
        self.signals = {}

    def connect(self, signal, slot):
        self.signals.setdefault(signal, Signal()).slots.append(slot)

    def click(self):
        assert self.enabled, f"{self.name} is disabled: {self.toolTip}"
        self.signals["clicked(bool)"](False)


class FakeCombo(FakeWidget):
    def __init__(self, name, items=()):
        super().__init__(name)
        self.items, self.index = [(i, i) for i in items], 0

    def clear(self):
        self.items, self.index = [], -1

    def addItem(self, text, data=None):
        self.items.append((text, data))
        self.index = max(self.index, 0)

    def findData(self, data):
        return next((n for n, (_, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, index):
        self.index = index

    def itemData(self, index):
        return self.items[index][1]

    @property
    def count(self):
        return len(self.items)

    def blockSignals(self, block):
        return False

    @property
    def currentData(self):
        return self.items[self.index][1] if 0 <= self.index < len(self.items) else None

    @property
    def currentText(self):
        return self.items[self.index][0] if 0 <= self.index < len(self.items) else ""


class FakeCheckable(FakeWidget):
    def __init__(self, name):
        super().__init__(name)
        self.checked = []

    def setCheckState(self, node, state):
        if state and node not in self.checked:
            self.checked.append(node)
        elif not state and node in self.checked:
            self.checked.remove(node)

    def checkedNodes(self):
        return list(self.checked)


class FakeToggle(FakeWidget):
    """A checkable button: ``toggle(checked)`` as the user clicks it; ``blockSignals`` as Qt's."""

    def __init__(self, name):
        super().__init__(name)
        self.checked, self.blocked = False, False

    def blockSignals(self, block):
        self.blocked = block

    def toggle(self, checked):
        assert self.enabled, f"{self.name} is disabled: {self.toolTip}"
        self.checked = checked
        if not self.blocked:
            self.signals["toggled(bool)"](checked)


class FakeTimer:
    def __init__(self):
        self.active = False
        self.single_shot = False

    def setSingleShot(self, single):
        self.single_shot = single

    def setInterval(self, ms):
        pass

    def connect(self, signal, slot):
        self.slot = slot

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


def fake_ui():
    from MedDDPMSynthSlicerUI.widget import MAPPING_COMBOS, SHIFTS

    ui = types.SimpleNamespace()
    for name, _ in MAPPING_COMBOS:
        setattr(ui, name, FakeCombo(name))
    for name in ("modelComboBox",):
        setattr(ui, name, FakeCombo(name))
    ui.rotateAxisComboBox = FakeCombo("rotateAxisComboBox", ["S", "A", "R"])
    ui.exportVolumesComboBox = FakeCheckable("exportVolumesComboBox")
    names = ["generateButton", "cancelButton", "importModelButton", "scaleButton", "rotateButton",
             "removeTumourButton", "undoButton", "regenerateButton", "exportButton", "progressBar", "statusLabel",
             "samplerComboBox", "stepsSpinBox"] + [f"shift{n}Button" for n in SHIFTS]
    for name in names + ["applyMoveButton", "cancelMoveButton"]:
        setattr(ui, name, FakeWidget(name))
    ui.moveTumourButton = FakeToggle("moveTumourButton")
    return ui


@pytest.fixture()
def panel(monkeypatch, tmp_path, model_home):  # noqa: F811
    qt = types.ModuleType("qt")
    qt.QTimer = FakeTimer
    qt.Qt = types.SimpleNamespace(WaitCursor=3, Checked=2, Unchecked=0)
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.delitem(sys.modules, "MedDDPMSynthSlicerUI.widget", raising=False)
    errors = []
    app = types.SimpleNamespace(setOverrideCursor=lambda c: None, restoreOverrideCursor=lambda: None)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append((text, kw)))
    widget = importlib.import_module("MedDDPMSynthSlicerUI.widget")
    scene = new_scene()
    logic = SceneLogic(scene, temp_dir=tmp_path)
    module_logic = types.SimpleNamespace(ready=True, sceneLogic=logic)
    params = types.SimpleNamespace(segmentation=None, referenceVolume=None, model="tiny16", samples=1, seed=5,
                                   preset="Custom", sampler="ddim", steps=2, device="cpu", marginMm=10.0, harmonize=1,
                                   shiftStepMm=4.0, scaleFactor=1.2, rotateDeg=15.0, exportFolder=tmp_path / "ds",
                                   caseId="")
    ui = fake_ui()
    controller = widget.WidgetController(ui, module_logic, lambda: params)
    return types.SimpleNamespace(ui=ui, controller=controller, params=params, scene=scene, logic=logic,
                                 errors=errors, tmp=tmp_path)


def run_timer(panel, limit=600.0):
    """Drive the panel's timer until the job ends (the event); the limit only catches a hang."""
    deadline = time.monotonic() + limit
    while panel.controller.timer.active and time.monotonic() < deadline:
        panel.controller.poll()
        time.sleep(0.05)
    assert not panel.controller.timer.active, f"the job did not end within {limit:.0f} s"


def test_buttons_say_what_is_missing(panel):
    panel.controller.updateButtons()
    assert not panel.ui.generateButton.enabled and panel.ui.generateButton.toolTip == "Choose a segmentation"
    assert not panel.ui.undoButton.enabled and not panel.ui.regenerateButton.enabled
    assert not panel.ui.exportButton.enabled and panel.ui.exportButton.toolTip == "Check the volume(s) to export"
    assert [text for text, _ in panel.ui.modelComboBox.items] == ["demo (whole_head)", "tiny16 (whole_head)"]


def test_generate_shift_regenerate_cancel_export_from_the_panel(panel):
    ui, scene = panel.ui, panel.scene
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("oblique"), {1: "head", 2: "tumour"})
    panel.params.segmentation = segmentation
    panel.controller.refreshSegments()
    assert [t for t, _ in ui.tumourSegmentComboBox.items] == ["(by name)", "head", "tumour"]
    before = scene.GetNumberOfNodes()

    ui.generateButton.click()
    assert not ui.generateButton.enabled and ui.cancelButton.enabled  # while it runs
    run_timer(panel)
    assert panel.errors == [] and ui.progressBar.value == 100 and ui.statusLabel.text.startswith("Done: ")
    assert scene.GetNumberOfNodes() == before + 2 and len(ui.exportVolumesComboBox.checked) == 1

    ui.shiftRightButton.click()
    assert ui.undoButton.enabled and ui.statusLabel.text.startswith("shift: ")
    ui.regenerateButton.click()
    run_timer(panel)
    assert panel.errors == [] and scene.GetNumberOfNodes() == before + 2  # updated in place
    ui.undoButton.click()
    assert not ui.undoButton.enabled

    ui.generateButton.click()
    ui.cancelButton.click()
    assert ui.statusLabel.text == "Cancelled; nothing was added to the scene."
    assert scene.GetNumberOfNodes() == before + 2 and list(panel.tmp.glob("MedDDPMSynth-*")) == []
    assert ui.generateButton.enabled and not ui.cancelButton.enabled

    panel.controller.updateButtons()
    ui.exportButton.click()  # the volume was regenerated for the shifted tumour, then the shift was undone
    [(text, _)] = panel.errors
    assert text.startswith("the segmentation was edited after 'Segmentation T1C seed 5' was generated")
    assert not (panel.tmp / "ds").exists()
    ui.regenerateButton.click()  # the image follows the label again
    run_timer(panel)
    ui.exportButton.click()
    assert panel.errors[1:] == [] and (panel.tmp / "ds" / "dataset.json").is_file()


def test_bad_input_disables_generate_or_is_one_message_without_traceback(panel):
    labels = standard_head()
    labels[1:4, 1:4, 1:4] = 2  # a stray tumour blob outside the head
    segmentation, _ = add_segmentation(panel.scene, labels, matrix("LPS"), {1: "Segment_1", 2: "tumour"})
    panel.params.segmentation = segmentation
    panel.controller.refreshSegments()
    before = panel.scene.GetNumberOfNodes()
    ui = panel.ui
    assert not ui.generateButton.enabled  # the segment names say nothing: the tooltip says what to do
    assert ui.generateButton.toolTip.startswith("segment name(s) 'Segment_1' name no tissue of the whole_head model")
    combo = ui.tissueSegmentComboBox  # choosing the head segment in the mapping fixes that
    combo.setCurrentIndex(combo.findData(segmentation.GetSegmentation().GetSegmentIdBySegmentName("Segment_1")))
    combo.signals["currentIndexChanged(int)"](combo.index)
    assert ui.generateButton.enabled

    ui.generateButton.click()  # the stray blob: refused before any process starts, one message
    [(text, options)] = panel.errors
    assert text == ("1 tumour region(s) (27 voxels) lie outside the head, not touching it; move the tumour inside "
                    "the head or erase the stray voxels")
    assert "detailedText" not in options and not panel.controller.timer.active
    assert panel.scene.GetNumberOfNodes() == before

    labels[1:4, 1:4, 1:4] = 0
    panel.scene.RemoveNode(segmentation)
    segmentation, _ = add_segmentation(panel.scene, labels, matrix("LPS"), {1: "head", 2: "tumour"})
    panel.params.segmentation = segmentation
    panel.controller.refreshSegments()
    before = panel.scene.GetNumberOfNodes()
    panel.params.steps = 50  # the engine's own refusal (T = 10), from the background process
    ui.generateButton.click()
    run_timer(panel)
    assert panel.errors[-1][0] == "--steps must be between 1 and 10 (the model's T), got 50"
    assert "detailedText" not in panel.errors[-1][1]
    assert panel.scene.GetNumberOfNodes() == before and ui.generateButton.enabled


def test_model_selector_and_parameter_node_never_drift(panel):
    """A saved model that is not installed: the parameter node takes the model the selector shows."""
    panel.params.model = "wholehead"  # from another session or machine
    panel.controller.refreshModels()
    combo = panel.ui.modelComboBox
    assert combo.index == 0 and combo.itemData(0) == "demo" and panel.params.model == "demo"
    panel.params.model = "tiny16"
    panel.controller.refreshModels()
    assert combo.currentData == "tiny16" and panel.params.model == "tiny16"
    panel.controller.moduleLogic.ready = False  # before the engine imports: keep the saved choice as it is
    panel.params.model = "wholehead"
    panel.controller.refreshModels()
    assert [d for _, d in combo.items] == ["wholehead"] and panel.params.model == "wholehead"


def test_panel_survives_an_engine_that_fails_to_import(panel):
    class BrokenLogic:
        ready = True
        notReadyReason = None

        @property
        def sceneLogic(self):
            raise OSError("[WinError 126] The specified module could not be found: fbgemm.dll")

    segmentation, _ = add_segmentation(panel.scene, standard_head(), matrix("LPS"), {1: "head", 2: "tumour"})
    panel.params.segmentation = segmentation
    panel.controller.moduleLogic = BrokenLogic()
    panel.controller.updateButtons()  # from setup(): must not raise
    assert "fbgemm.dll" in panel.ui.statusLabel.text
    assert not panel.ui.undoButton.enabled and not panel.ui.regenerateButton.enabled
    panel.ui.generateButton.enabled = True
    panel.ui.generateButton.click()  # one dialog saying what failed; no job starts
    assert "fbgemm.dll" in panel.errors[-1][0] and not panel.controller.timer.active


def test_a_new_result_replaces_the_earlier_one_in_the_export_list(panel):
    segmentation, _ = add_segmentation(panel.scene, standard_head(), matrix("oblique"), {1: "head", 2: "tumour"})
    panel.params.segmentation = segmentation
    panel.params.samples = 2
    panel.controller.refreshSegments()
    panel.ui.generateButton.click()
    run_timer(panel)
    first = list(panel.ui.exportVolumesComboBox.checked)
    assert len(first) == 2  # both samples: two cases
    panel.params.samples = 1
    panel.ui.generateButton.click()
    run_timer(panel)
    second = list(panel.ui.exportVolumesComboBox.checked)
    assert len(second) == 1 and second[0] not in first
    panel.controller.updateButtons()
    panel.ui.exportButton.click()
    assert panel.errors == []
    assert sorted(p.name for p in (panel.tmp / "ds" / "imagesTr").iterdir()) == [f"{second[0].GetName().replace(' ', '_')}_0000.nii.gz"]


def test_install_question_comes_before_the_wait_cursor_and_the_model_list_follows(panel, monkeypatch):
    """The first Generate creates the scene logic (that may ask to install torch): no wait cursor over the
    question, and the selector then lists the real models instead of the placeholder."""
    cursor = []
    monkeypatch.setattr(slicer.app, "setOverrideCursor", lambda c: cursor.append(c))
    monkeypatch.setattr(slicer.app, "restoreOverrideCursor", lambda: cursor.pop())
    real = panel.logic

    class FirstUse:  # the module logic before the dependencies exist
        ready = False
        notReadyReason = "missing: torch"

        @property
        def sceneLogic(self):
            if not self.ready:  # the first use: ensure_dependencies may show its question here
                assert cursor == [], "the install question would sit under a wait cursor"
                self.ready = True
            return real

    panel.controller.moduleLogic = FirstUse()
    panel.params.model = "tiny16"
    panel.controller.refreshModels()
    assert [d for _, d in panel.ui.modelComboBox.items] == ["tiny16"]  # the placeholder: the saved choice
    segmentation, _ = add_segmentation(panel.scene, standard_head(), matrix("LPS"), {1: "head", 2: "tumour"})
    panel.params.segmentation = segmentation
    panel.controller.refreshSegments()
    panel.ui.generateButton.click()
    run_timer(panel)
    assert panel.errors == [] and cursor == []
    assert [d for _, d in panel.ui.modelComboBox.items] == ["demo", "tiny16"]


def test_move_tumour_with_handles_preview_apply_cancel(panel, monkeypatch):
    """Move tumour: the transform with Slicer's handles, a throttled clipped preview, Apply = one undoable
    edit equal to the step buttons' shift, Cancel = nothing changed; the step buttons wait meanwhile."""
    import numpy as np
    from slicer_scene_helpers import tumour_centroid_ras

    from MedDDPMSynthSlicerLib.move import set_matrix

    ui, scene, logic = panel.ui, panel.scene, panel.logic
    segmentation, _ = add_segmentation(scene, standard_head(), matrix("oblique"), {1: "head", 2: "tumour"})
    panel.params.segmentation = segmentation
    panel.controller.refreshSegments()
    original, m = logic.label_array(segmentation)
    before = scene.GetNumberOfNodes()
    previews = []
    real_preview = logic.preview_move
    monkeypatch.setattr(logic, "preview_move", lambda seg: previews.append(seg) or real_preview(seg))

    ui.moveTumourButton.toggle(True)
    transform = logic.move_transform(segmentation)
    assert transform is not None and transform.GetDisplayNode().GetEditorVisibility()
    assert transform.GetDisplayNode().GetEditorSliceIntersectionVisibility()  # handles in the slice views too
    assert not ui.shiftRightButton.enabled and ui.shiftRightButton.toolTip == "Apply or cancel the move first"
    assert ui.applyMoveButton.enabled and ui.cancelMoveButton.enabled and not ui.undoButton.enabled
    timer = panel.controller.previewTimer
    assert timer.single_shot
    for step in (2.0, 4.0, 8.0):  # a drag: many transform events, one preview when it pauses
        set_matrix(transform, np.r_[np.c_[np.eye(3), [step, 0.0, 0.0]], [[0, 0, 0, 1]]])
        assert timer.active and previews == []
    timer.slot()
    assert len(previews) == 1 and ui.statusLabel.text.startswith("Preview: ")
    ui.applyMoveButton.click()
    moved, _ = logic.label_array(segmentation)
    np.testing.assert_allclose(tumour_centroid_ras(moved, m) - tumour_centroid_ras(original, m), [8, 0, 0], atol=2.0)
    assert ui.statusLabel.text.startswith("move applied: ") and not ui.moveTumourButton.checked
    assert scene.GetNumberOfNodes() == before and panel.errors == []
    assert ui.undoButton.enabled and ui.shiftRightButton.enabled and not ui.applyMoveButton.enabled
    ui.undoButton.click()
    ui.shiftRightButton.click()  # the step button moves by the 4 mm step: the same engine edit
    stepped, _ = logic.label_array(segmentation)
    ui.undoButton.click()

    ui.moveTumourButton.toggle(True)  # Cancel: every voxel and node as before
    set_matrix(logic.move_transform(segmentation), np.diag([1.4, 1.4, 1.4, 1.0]))
    timer.slot()
    ui.cancelMoveButton.click()
    np.testing.assert_array_equal(logic.label_array(segmentation)[0], original)
    assert scene.GetNumberOfNodes() == before and not ui.moveTumourButton.checked and not timer.active
    assert ui.statusLabel.text == "Move cancelled; the segmentation is unchanged."

    ui.moveTumourButton.toggle(True)  # toggling off cancels too, and moving the tumour in steps works again
    ui.moveTumourButton.toggle(False)
    assert not logic.is_moving(segmentation) and scene.GetNumberOfNodes() == before
    ui.shiftRightButton.click()
    np.testing.assert_array_equal(logic.label_array(segmentation)[0], stepped)
