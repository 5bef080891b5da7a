"""The module panel's behaviour (Slicer application only): a thin shell over :class:`logic.SceneLogic`.

Reads the parameter node and the selectors, calls one logic method per button, polls the background job
from a QTimer (progress bar with ETA), shows engine errors as one message. No algorithm lives here.
Engine imports (which need torch) happen only after the module logic has ensured the dependencies.
"""

from __future__ import annotations

import contextlib
import traceback

import qt
import slicer

BY_NAME = "(by name)"
#: (combo box, its role): the family's tissue, its innermost tumour layer (whole-head: the tumour, BraTS:
#: necrotic), or a named BraTS layer (ignored by families without it); the family says which tissue that is
MAPPING_COMBOS = (("tissueSegmentComboBox", "tissue"), ("tumourSegmentComboBox", "innermost"),
                  ("edemaSegmentComboBox", "edema"), ("enhancingSegmentComboBox", "enhancing"))


def combo_tissue(role: str, family) -> str | None:
    """The family's tissue a mapping combo box stands for (None when the family has no such tissue)."""
    if role == "tissue":
        return family.tissue_name
    if role == "innermost":
        return family.paint_order[-1]
    return role if role in family.condition_names else None
SHIFTS = {"Right": (1, 0, 0), "Left": (-1, 0, 0), "Anterior": (0, 1, 0), "Posterior": (0, -1, 0),
          "Superior": (0, 0, 1), "Inferior": (0, 0, -1)}
AXES = {"R": (1, 0, 0), "A": (0, 1, 0), "S": (0, 0, 1)}
TITLE = "MedDDPM Synth"
PREVIEW_DELAY_MS = 150  # while dragging the handles: the clipped preview follows when the drag pauses


def isUserError(error: Exception) -> bool:
    """The engine's and the installer's errors carry a message for the user (no traceback needed)."""
    return any(c.__name__ in ("MedDDPMError", "DependencyError") for c in type(error).__mro__)


class WidgetController:
    """Everything the buttons do; ``moduleLogic`` is the module's MedDDPMSynthLogic."""

    def __init__(self, ui, moduleLogic, parameterNode_getter):
        self.ui = ui
        self.moduleLogic = moduleLogic
        self.parameters = parameterNode_getter
        self.job = None
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.poll)
        ui.generateButton.connect("clicked(bool)", self.onGenerate)
        ui.cancelButton.connect("clicked(bool)", self.onCancel)
        ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        for name in SHIFTS:
            getattr(ui, f"shift{name}Button").connect("clicked(bool)", lambda _=False, n=name: self.onShift(n))
        ui.scaleButton.connect("clicked(bool)", self.onScale)
        ui.rotateButton.connect("clicked(bool)", self.onRotate)
        ui.removeTumourButton.connect("clicked(bool)", self.onRemove)
        ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.moving = None  # (segmentation, transform node, observer tag) while the tumour is being moved
        self.previewTimer = qt.QTimer()  # single shot, restarted by every drag event: preview when it pauses
        self.previewTimer.setSingleShot(True)
        self.previewTimer.setInterval(PREVIEW_DELAY_MS)
        self.previewTimer.connect("timeout()", self.previewMove)
        ui.moveTumourButton.connect("toggled(bool)", self.onMoveToggled)
        ui.applyMoveButton.connect("clicked(bool)", self.onApplyMove)
        ui.cancelMoveButton.connect("clicked(bool)", self.onCancelMove)
        ui.regenerateButton.connect("clicked(bool)", self.onRegenerate)
        ui.exportButton.connect("clicked(bool)", self.onExport)
        ui.exportVolumesComboBox.connect("checkedNodesChanged()", self.updateButtons)
        for comboName, _ in MAPPING_COMBOS:
            getattr(ui, comboName).connect("currentIndexChanged(int)", self.updateButtons)
        ui.cancelButton.enabled = False
        self.refreshModels()

    # ------------------------------------------------------------------------------- inputs

    def refreshModels(self) -> None:
        combo = self.ui.modelComboBox
        current = (self.parameters().model if self.parameters() else "") or "demo"
        combo.blockSignals(True)
        combo.clear()
        entries, listed = [{"name": current}], False  # before the engine imports: the saved choice, as is
        if self.moduleLogic.ready:
            try:
                entries, listed = self.moduleLogic.sceneLogic.available_models(), True
            except Exception as error:  # a damaged catalogue must not break the panel
                self.setStatus(str(error))
        for entry in entries:
            family = entry.get("family", "")
            combo.addItem(f"{entry['name']} ({family})" if family else entry["name"], entry["name"])
        index = combo.findData(current)
        if index < 0 and listed and combo.count and self.parameters() is not None:
            # the saved model is not available (removed, or from another machine): Generate must use the model
            # the selector shows, and choosing that item must not be a no-op
            index = 0
            self.parameters().model = combo.itemData(0)
        combo.setCurrentIndex(max(index, 0))
        combo.blockSignals(False)

    def onModelChanged(self, index: int) -> None:
        if self.parameters() is not None and index >= 0:
            self.parameters().model = self.ui.modelComboBox.itemData(index)
        self.updateButtons()

    def onImportModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Import a Med-DDPM model", "",
                                              "Med-DDPM checkpoints (*.pt *.pth *.safetensors)")
        if not path:
            return
        name = qt.QInputDialog.getText(slicer.util.mainWindow(), "Import model", "Name for this model:",
                                       qt.QLineEdit.Normal, qt.QFileInfo(path).baseName())
        if not name or not self.ensureLogic():
            return
        with self.userErrors():
            entry = self.moduleLogic.sceneLogic.import_model(path, name=name)
            self.parameters().model = entry["name"]
            self.refreshModels()
            self.setStatus(f"Imported '{entry['name']}' ({entry['family']}, sha256 {entry['sha256'][:12]}...)")

    def refreshSegments(self) -> None:
        """Fill the mapping selectors with the segmentation's segments (ID as item data)."""
        segmentation = self.parameters().segmentation if self.parameters() else None
        segments = []
        if segmentation is not None:
            seg = segmentation.GetSegmentation()
            segments = [(seg.GetNthSegmentID(n), seg.GetNthSegment(n).GetName()) for n in range(seg.GetNumberOfSegments())]
        for comboName, _ in MAPPING_COMBOS:
            combo = getattr(self.ui, comboName)
            chosen = combo.currentData
            combo.blockSignals(True)
            combo.clear()
            combo.addItem(BY_NAME, "")
            for segmentId, name in segments:
                combo.addItem(name, segmentId)
            combo.setCurrentIndex(max(combo.findData(chosen), 0) if chosen else 0)
            combo.blockSignals(False)
        self.updateButtons()

    def family(self):
        return self.moduleLogic.sceneLogic.model_family(self.parameters().model)

    def mapping(self, family):
        """None (segment names decide) or {tissue: segment ID} from the selectors."""
        choice = {}
        for comboName, role in MAPPING_COMBOS:
            tissue = combo_tissue(role, family)
            segmentId = getattr(self.ui, comboName).currentData
            if tissue and segmentId:
                choice[tissue] = segmentId
        return choice or None

    def settings(self):
        p = self.parameters()
        choices = {"samples": p.samples, "seed": p.seed, "device": p.device, "margin_mm": p.marginMm,
                   "harmonize": p.harmonize}
        if p.preset == "Custom":
            choices.update(sampler=p.sampler, steps=p.steps)
        return self.moduleLogic.sceneLogic.settings_for(p.model, p.preset, **choices)

    # ----------------------------------------------------------------------------- generation

    def onGenerate(self) -> None:
        self.start(lambda logic, seg, ref, family: logic.start_generation(
            seg, self.settings(), ref, self.mapping(family)))

    def onRegenerate(self) -> None:
        self.start(lambda logic, seg, ref, family: logic.start_regeneration(
            seg, self.settings(), ref, self.mapping(family)))

    def start(self, starter) -> None:
        p = self.parameters()
        if not self.ensureLogic():
            return
        with self.userErrors():
            logic = self.moduleLogic.sceneLogic  # installs the dependencies on first use (asks first)
            self.job = starter(logic, p.segmentation, p.referenceVolume, self.family())
            self.ui.progressBar.value = 0
            self.setStatus("Starting the model...")
            self.timer.start()
        self.updateButtons()

    def poll(self) -> None:
        job = self.job
        if job is None:
            self.timer.stop()
            return
        job.poll()
        if job.progress_text():
            self.ui.progressBar.value = int(100 * job.fraction())
            self.setStatus(job.progress_text())
        if job.running:
            return
        self.timer.stop()
        self.job = None
        logic = self.moduleLogic.sceneLogic
        try:
            nodes = logic.finish_generation(job)
        except Exception as error:
            self.showError(error)
        else:
            logic.show_volumes(nodes, self.parameters().segmentation)
            exportCombo = self.ui.exportVolumesComboBox  # Export takes the latest result (a case per sample)
            for node in list(exportCombo.checkedNodes()):
                exportCombo.setCheckState(node, qt.Qt.Unchecked)
            for node in nodes:
                exportCombo.setCheckState(node, qt.Qt.Checked)
            self.ui.progressBar.value = 100
            warnings = "; ".join(job.warnings)
            self.setStatus(f"Done: {', '.join(n.GetName() for n in nodes)}" + (f" (warning: {warnings})" if warnings else ""))
        self.updateButtons()

    def onCancel(self) -> None:
        if self.job is not None:
            self.moduleLogic.sceneLogic.cancel_generation(self.job)
            self.job = None
        self.timer.stop()
        self.ui.progressBar.value = 0
        self.setStatus("Cancelled; nothing was added to the scene.")
        self.updateButtons()

    # --------------------------------------------------------------------------- tumour tools

    def edit(self, method, *args) -> None:
        p = self.parameters()
        if not self.ensureLogic():
            return
        with self.userErrors():
            logic = self.moduleLogic.sceneLogic
            family = self.family()
            record = getattr(logic, method)(p.segmentation, *args, reference_volume=p.referenceVolume,
                                            mapping=self.mapping(family), family=family)
            clipped = record.get("clipped_voxels", 0)
            self.setStatus(f"{record['op']}: {record['voxels_after']} tumour voxels"
                           + (f", {clipped} clipped at the head's edge" if clipped else ""))
        self.updateButtons()

    def onShift(self, direction: str) -> None:
        step = self.parameters().shiftStepMm
        self.edit("shift_tumour", [step * v for v in SHIFTS[direction]])

    def onScale(self) -> None:
        self.edit("scale_tumour", self.parameters().scaleFactor)

    def onRotate(self) -> None:
        axis = AXES[self.ui.rotateAxisComboBox.currentText]
        self.edit("rotate_tumour", [self.parameters().rotateDeg * v for v in axis])

    def onRemove(self) -> None:
        self.edit("remove_tumour")

    def onUndo(self) -> None:
        if not self.ensureLogic():
            return
        with self.userErrors():
            self.moduleLogic.sceneLogic.undo_tumour_edit(self.parameters().segmentation)
        self.updateButtons()

    # ----------------------------------------------------------------------------- move tumour

    def onMoveToggled(self, checked: bool) -> None:
        """On: the tumour's copy under a transform with Slicer's handles; off: the move is cancelled."""
        if not checked:
            if self.moving is not None:
                self.onCancelMove()
            return
        p = self.parameters()
        if not self.ensureLogic():
            self.setMoveButton(False)
            return
        with self.userErrors():
            logic = self.moduleLogic.sceneLogic
            family = self.family()
            transform = logic.begin_move(p.segmentation, reference_volume=p.referenceVolume,
                                         mapping=self.mapping(family), family=family)
            tag = transform.AddObserver(slicer.vtkMRMLTransformNode.TransformModifiedEvent, self.onTransformModified)
            self.moving = (p.segmentation, transform, tag)
            self.setStatus("Drag the handles in the slice or 3-D views; the filled tumour shows where it lands "
                           "(clipped to the head). Then Apply or Cancel.")
        if self.moving is None:
            self.setMoveButton(False)
        self.updateButtons()

    def onTransformModified(self, *_args) -> None:
        self.previewTimer.start()  # restarts while the handles move: one preview per pause, not per event

    def previewMove(self) -> None:
        if self.moving is None:
            return
        try:
            record = self.moduleLogic.sceneLogic.preview_move(self.moving[0])
        except Exception as error:  # while dragging: say it on the status line, never a dialog per event
            self.setStatus(f"Preview: {error}")
            return
        clipped = record.get("clipped_voxels", 0)
        self.setStatus(f"Preview: {record['voxels_after']} tumour voxels"
                       + (f", {clipped} clipped at the head's edge" if clipped else ""))

    def onApplyMove(self) -> None:
        if self.moving is None:
            return
        if not self.moduleLogic.sceneLogic.is_moving(self.moving[0]):  # its nodes were deleted meanwhile
            self.endMove()
            self.setStatus("The move's transform or preview was deleted; click 'Move tumour' again.")
            self.updateButtons()
            return
        with self.userErrors():
            record = self.moduleLogic.sceneLogic.apply_move(self.moving[0])
            self.endMove()
            clipped = record.get("clipped_voxels", 0)
            self.setStatus(f"move applied: {record['voxels_after']} tumour voxels"
                           + (f", {clipped} clipped at the head's edge" if clipped else ""))
        self.updateButtons()

    def onCancelMove(self) -> None:
        if self.moving is not None:
            with self.userErrors():
                self.moduleLogic.sceneLogic.cancel_move(self.moving[0])
            self.endMove()
            self.setStatus("Move cancelled; the segmentation is unchanged.")
        self.updateButtons()

    def endMove(self) -> None:
        self.previewTimer.stop()
        if self.moving is not None:
            _, transform, tag = self.moving
            transform.RemoveObserver(tag)
            self.moving = None
        self.setMoveButton(False)

    def setMoveButton(self, checked: bool) -> None:
        button = self.ui.moveTumourButton
        button.blockSignals(True)
        button.checked = checked
        button.blockSignals(False)

    # ---------------------------------------------------------------------------------- export

    def onExport(self) -> None:
        p = self.parameters()
        volumes = list(self.ui.exportVolumesComboBox.checkedNodes())
        if not self.ensureLogic():
            return
        with self.userErrors():
            logic = self.moduleLogic.sceneLogic
            family = logic.family_of_volumes(volumes) if volumes else None
            files = logic.export_training_pair(volumes, p.segmentation, str(p.exportFolder), p.caseId or None,
                                               mapping=self.mapping(family) if family else None, family=family)
            self.setStatus(f"Exported {len(files)} files to {p.exportFolder}")

    # ------------------------------------------------------------------------------- state

    def ensureLogic(self) -> bool:
        """The scene logic, created on first use: that may ask to install the dependencies, so it runs
        before any wait cursor (which would sit over the dialog); then the real model list is shown."""
        wasReady = self.moduleLogic.ready
        try:
            self.moduleLogic.sceneLogic
        except Exception as error:
            self.showError(error)
            return False
        if not wasReady:
            self.refreshModels()
            self.applyDeviceDefault()
        return True

    def applyDeviceDefault(self) -> None:
        """The engine's per-device preset once torch is there (Exact on a GPU): the parameter node starts
        at Preview, the CPU default, because telling the device needs torch."""
        from MedDDPMSynthSlicerLib.jobs import default_preset_label

        p = self.parameters()
        if p is not None and p.preset == "Preview":
            p.preset = default_preset_label(p.device)

    @contextlib.contextmanager
    def userErrors(self):
        """Wait cursor while the block runs; a problem is shown as one message (and the status line)."""
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            yield
        except Exception as error:
            slicer.app.restoreOverrideCursor()
            self.showError(error)
        else:
            slicer.app.restoreOverrideCursor()

    def showError(self, error: Exception) -> None:
        self.setStatus(f"Failed: {error}")
        if isUserError(error):
            slicer.util.errorDisplay(str(error), windowTitle=TITLE)
        else:  # a bug: say so, with the details for a report
            slicer.util.errorDisplay(f"Unexpected error: {error}", windowTitle=TITLE,
                                     detailedText=traceback.format_exc())

    def setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def updateButtons(self) -> None:
        """Enable each button only when its inputs are valid; the tooltip says what is missing."""
        p = self.parameters()
        running = self.job is not None
        segmentation = p.segmentation if p else None
        segments = segmentation.GetSegmentation().GetNumberOfSegments() if segmentation else 0
        ready = self.moduleLogic.ready  # never trigger the dependency installation from here
        why = ("Wait for the running generation or cancel it" if running else
               "Choose a segmentation" if segmentation is None else
               "Paint a head and a tumour segment in the Segment Editor" if not segments else
               self.mappingProblem(segmentation) if ready else "")
        self._enable(self.ui.generateButton, not why, why or "Generate synthetic MRI from the segmentation")
        self.ui.cancelButton.enabled = running
        moving = self.moving is not None
        if moving and segmentation is not self.moving[0]:  # another segmentation chosen: end the old move
            self.onCancelMove()
            return
        whyStep = why or ("Apply or cancel the move first" if moving else "")
        for name in [f"shift{n}Button" for n in SHIFTS] + ["scaleButton", "rotateButton", "removeTumourButton"]:
            self._enable(getattr(self.ui, name), not whyStep, whyStep)
        self._enable(self.ui.moveTumourButton, moving or not why,
                     why or "Move, rotate and resize the tumour with handles in the views; then Apply or Cancel")
        self._enable(self.ui.applyMoveButton, moving, "Write the moved tumour into the segmentation (one undo step)"
                     if moving else "Click 'Move tumour' first")
        self._enable(self.ui.cancelMoveButton, moving, "Put the tumour back as it was" if moving
                     else "Click 'Move tumour' first")
        try:  # this runs from the panel's setup: an engine that fails to import must not stop the panel
            canUndo = ready and not running and self.moduleLogic.sceneLogic.can_undo(segmentation)
            canRegenerate = ready and not running and self.moduleLogic.sceneLogic.can_regenerate(segmentation)
        except Exception as error:
            canUndo = canRegenerate = False
            self.setStatus(f"Failed: {error}")
        if not ready and getattr(self.moduleLogic, "notReadyReason", None):
            self.setStatus(f"Not ready: {self.moduleLogic.notReadyReason} (Generate installs what is missing)")
        canUndo = canUndo and not moving
        self._enable(self.ui.undoButton, canUndo, "Undo the last tumour edit" if canUndo else "No tumour edit to undo")
        self._enable(self.ui.regenerateButton, canRegenerate,
                     "Regenerate only around the edited tumour" if canRegenerate else "Generate a result first")
        volumes = [n for n in self.ui.exportVolumesComboBox.checkedNodes() if not n.IsA("vtkMRMLLabelMapVolumeNode")]
        folder = str(p.exportFolder) if p and p.exportFolder else ""
        whyExport = ("Check the volume(s) to export" if not volumes else "Choose a segmentation" if segmentation is None
                     else "Choose the dataset folder" if folder in ("", ".") else "")
        self._enable(self.ui.exportButton, not whyExport, whyExport or "Export the volumes + segmentation (nnU-Net)")
        custom = bool(p) and p.preset == "Custom"
        self.ui.samplerComboBox.enabled = custom
        self.ui.stepsSpinBox.enabled = custom

    def mappingProblem(self, segmentation) -> str:
        """Why the segments cannot be mapped to the model's tissues ("" when they can); cheap, no export."""
        try:
            family = self.family()
            self.moduleLogic.sceneLogic.segment_mapping(segmentation, family, self.mapping(family))
        except Exception as error:
            return str(error) if isUserError(error) else f"Unexpected error: {error}"
        return ""

    @staticmethod
    def _enable(button, enabled: bool, tooltip: str) -> None:
        button.enabled = bool(enabled)
        if tooltip:
            button.toolTip = tooltip

    def cleanup(self) -> None:
        if self.job is not None:
            self.onCancel()
        if self.moving is not None:
            self.onCancelMove()
        self.timer.stop()
