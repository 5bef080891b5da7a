"""3D Slicer scripted module: synthetic brain MRI from a segmentation with Med-DDPM.

Three layers: the engine ``MedDDPMSynthLib`` (no Slicer), the scene logic
``MedDDPMSynthSlicerLib.logic.SceneLogic`` (MRML in, MRML out, tested on a real vtkMRMLScene from the
``slicer-core`` wheel) and this file: module metadata, a thin widget, the module logic (the scene logic on
``slicer.mrmlScene``, dependencies installed on first use) and the self-test.

From the Python console::

    logic = slicer.util.getModuleLogic("MedDDPMSynth")
    volumes = logic.generate(getNode("Segmentation"))          # blocking; the panel runs it in the background
    logic.shift_tumour(getNode("Segmentation"), [10, 0, 0])      # RAS mm
    transform = logic.begin_move(getNode("Segmentation"))       # drag its handles, then:
    logic.apply_move(getNode("Segmentation"))                   # or logic.cancel_move(...)
"""

import os

import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

EXAMPLE_MASK_SHA256 = "b9c0420cceedd4645dd8fb3a72b4395dbfcd717ff336bb2521690eb4eb5c3e0e"


def exampleMaskPath() -> str:
    """The example mask installed with the extension (MedDDPMSynthLib.resources: no torch needed)."""
    from MedDDPMSynthLib.resources import example_mask

    return str(example_mask())


#
# MedDDPMSynth
#


class MedDDPMSynth(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedDDPM Synth")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedDDPMSynth developers"]
        self.parent.helpText = _(
            "Generate a synthetic 3-D brain MRI from a label mask (whole-head T1c, or BraTS "
            "T1/T1ce/T2/FLAIR) with the Med-DDPM conditional diffusion model. Paint the head/brain and "
            "the tumour in the Segment Editor (segments named 'head' and 'tumour', or chosen in the segment "
            "mapping), choose a model and click Generate. Move, scale or rotate the tumour, regenerate only "
            "around it, and export image + mask pairs for nnU-Net. "
            "See <a href='https://github.com/medddpmsynth/SlicerMedDDPMSynth'>the project page</a>."
        )
        self.parent.acknowledgementText = _(
            "Med-DDPM: Z. Dorjsembe, H.-K. Pao, S. Odonchimed, F. Xiao, 'Conditional Diffusion Models "
            "for Semantic 3D Brain MRI Synthesis', IEEE Journal of Biomedical and Health Informatics "
            "28(7):4084-4093, 2024 (arXiv:2305.18453). The example mask is derived from the ICBM 2009a "
            "nonlinear symmetric MNI152 template (Copyright (C) 1993-2009 Louis Collins, McConnell Brain "
            "Imaging Centre, Montreal Neurological Institute, McGill University)."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """The example mask (brain = head label 1, tumour 2, MNI space) as a sample segmentation. Its source is
    the copy installed with the extension (a file: URI), so it needs no network and no published URL."""
    import pathlib

    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MedDDPMSynth",
        sampleName="MedDDPMSynthDemoMask",
        thumbnailFileName=os.path.join(iconsPath, "MedDDPMSynth.png"),
        uris=pathlib.Path(exampleMaskPath()).as_uri(),
        fileNames="MedDDPMSynthDemoMask.nii.gz",
        checksums=f"SHA256:{EXAMPLE_MASK_SHA256}",
        nodeNames="MedDDPMSynthDemoMask",
        loadFileTypes="SegmentationFile",
    )


#
# MedDDPMSynthWidget
#

#: segments added, removed or renamed: the mapping selectors follow
SEGMENT_EVENTS = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)


class MedDDPMSynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin shell: the .ui, the parameter node, and :class:`MedDDPMSynthSlicerUI.widget.WidgetController`."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.controller = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedSegmentation = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from MedDDPMSynthSlicerUI.widget import WidgetController

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedDDPMSynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedDDPMSynthLogic()
        self.controller = WidgetController(self.ui, self.logic, lambda: self._parameterNode)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.controller is not None:
            self.controller.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterChanged)

    def onSceneStartClose(self, caller, event) -> None:
        if self.controller is not None:
            self.controller.cleanup()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.segmentation:
            node = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
            if node:
                self._parameterNode.segmentation = node

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterChanged)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterChanged)
            self.controller.refreshModels()  # the model selector shows the parameter node's model
        self.onParameterChanged()

    def onParameterChanged(self, caller=None, event=None) -> None:
        """Follow the selected segmentation's segments; refresh the buttons."""
        segmentation = self._parameterNode.segmentation if self._parameterNode else None
        observed = segmentation.GetSegmentation() if segmentation is not None else None
        if observed is not self._observedSegmentation:
            for event in SEGMENT_EVENTS:
                if self._observedSegmentation is not None:
                    self.removeObserver(self._observedSegmentation, event, self.onSegmentsChanged)
                if observed is not None:
                    self.addObserver(observed, event, self.onSegmentsChanged)
            self._observedSegmentation = observed
            self.onSegmentsChanged()
        elif self.controller is not None:
            self.controller.updateButtons()

    def onSegmentsChanged(self, caller=None, event=None) -> None:
        if self.controller is not None:
            self.controller.refreshSegments()


#
# MedDDPMSynthLogic
#


class MedDDPMSynthLogic(ScriptedLoadableModuleLogic):
    """The module logic: :class:`MedDDPMSynthSlicerLib.logic.SceneLogic` on ``slicer.mrmlScene``.

    Its public methods (generate, start_generation, finish_generation, cancel_generation, label_array,
    shift_tumour, scale_tumour, rotate_tumour, remove_tumour, undo_tumour_edit, begin_move, preview_move,
    apply_move, cancel_move, regenerate, export_training_pair, import_model, ...) are available directly on this object. The engine's Python
    dependencies are installed on first use, after a confirmation dialog.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._sceneLogic = None
        self.notReadyReason = None

    def getParameterNode(self):
        from MedDDPMSynthSlicerUI.parameters import MedDDPMSynthParameterNode

        return MedDDPMSynthParameterNode(super().getParameterNode())

    @property
    def ready(self) -> bool:
        """True when the engine can be imported without installing anything (a broken torch: False, and
        :attr:`notReadyReason` says why)."""
        if self._sceneLogic is not None:
            return True
        try:
            from MedDDPMSynthSlicerUI.dependencies import missing_packages, torch_problem

            self.notReadyReason = "missing: " + ", ".join(missing_packages()) if missing_packages() else torch_problem()
            if self.notReadyReason:
                return False
            import MedDDPMSynthSlicerLib.logic  # noqa: F401  (the engine and torch import)
        except Exception as error:  # never out of a property: __getattr__ would hide it (and the panel)
            self.notReadyReason = f"the engine cannot be imported ({type(error).__name__}: {error})"
            return False
        return True

    @property
    def sceneLogic(self):
        try:
            if self._sceneLogic is None or self._sceneLogic.scene is not slicer.mrmlScene:
                from MedDDPMSynthSlicerUI.dependencies import ensure_dependencies

                # testing mode: a missing dependency raises instead of being installed (no dialog either)
                ensure_dependencies(ask=not slicer.app.testingEnabled())
                from MedDDPMSynthSlicerLib.logic import SceneLogic

                tempDir = os.path.join(slicer.app.temporaryPath, "MedDDPMSynth")
                self._sceneLogic = SceneLogic(slicer.mrmlScene, temp_dir=tempDir)
        except AttributeError as error:  # else Python falls back to __getattr__ and reports a missing attribute
            raise RuntimeError(f"the scene logic could not be created: {error}") from error
        return self._sceneLogic

    def __getattr__(self, name):
        from MedDDPMSynthSlicerLib import LOGIC_METHODS

        if name not in LOGIC_METHODS:  # never install dependencies for an unrelated attribute lookup
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(self.sceneLogic, name)


#
# MedDDPMSynthTest
#


class MedDDPMSynthTest(ScriptedLoadableModuleTest):
    """The logic scenario of Testing/Python/slicer_module/test_slicer_logic.py, inside Slicer on the example mask."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MedDDPMSynth_generate_edit_export()

    def test_MedDDPMSynth_generate_edit_export(self):
        import tempfile

        import numpy as np

        from MedDDPMSynthSlicerUI.dependencies import missing_packages, torch_problem

        missing = missing_packages()
        if slicer.app.testingEnabled() and (missing or torch_problem()):
            # testing mode never installs anything into the Slicer under test
            self.skipTest("the engine's Python dependencies are not usable here ("
                          + (", ".join(missing) + " missing" if missing else torch_problem()) + ")")
        self.delayDisplay("Loading the example mask")
        segmentation = slicer.util.loadSegmentation(exampleMaskPath())  # installed with the extension
        logic = MedDDPMSynthLogic()
        logic.name_segments_by_label(segmentation)
        labels, ijkToRas = logic.label_array(segmentation)
        self.assertEqual(set(np.unique(labels).tolist()), {0, 1, 2})

        self.delayDisplay("Generating (background process, 2 DDIM steps)")
        from MedDDPMSynthSlicerLib.jobs import GenerationSettings

        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        settings = GenerationSettings(model="demo", sampler="ddim", steps=2, device="auto", harmonize=1)
        volumes = logic.generate(segmentation, settings)
        self.assertEqual(len(volumes), 1)
        self.assertTrue(np.allclose(slicer.util.arrayFromVTKMatrix(_ijkToRas(volumes[0])), ijkToRas, atol=1e-4))

        self.delayDisplay("Cancel leaves the scene unchanged")
        before = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.start_generation(segmentation, settings)
        logic.cancel_generation(job)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.assertGreater(before, nodeCount)

        self.delayDisplay("Export (before any edit: image and label from the same mask)")
        with tempfile.TemporaryDirectory() as folder:
            files = logic.export_training_pair(volumes, segmentation, folder, case_id="selftest")
            self.assertEqual(len(files), 4)
            reloaded = slicer.util.loadVolume(os.path.join(folder, "imagesTr", "selftest_0000.nii.gz"))
            self.assertTrue(np.allclose(slicer.util.arrayFromVTKMatrix(_ijkToRas(reloaded)), ijkToRas, atol=1e-4))

        self.delayDisplay("Tumour shift with undo, local re-generation")
        logic.shift_tumour(segmentation, [6.0, 0.0, 0.0])
        self.assertFalse(np.array_equal(logic.label_array(segmentation)[0], labels))
        if (logic.model_timesteps("demo") or 0) <= 100:  # in-painting runs all T steps: only for a small T
            before = slicer.util.arrayFromVolume(volumes[0]).copy()
            logic.regenerate(segmentation)
            self.assertEqual(slicer.util.arrayFromVolume(volumes[0]).shape, before.shape)
        self.assertTrue(logic.undo_tumour_edit(segmentation))
        self.assertTrue(np.array_equal(logic.label_array(segmentation)[0], labels))

        self.delayDisplay("Move tumour: transform with handles, preview, cancel, apply = shift, undo")
        before = slicer.mrmlScene.GetNumberOfNodes()
        transform = logic.begin_move(segmentation)
        self.assertTrue(transform.GetDisplayNode().GetEditorVisibility())
        logic.set_move(segmentation, translation_ras=[6.0, 0.0, 0.0])
        logic.preview_move(segmentation)
        logic.cancel_move(segmentation)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.assertTrue(np.array_equal(logic.label_array(segmentation)[0], labels))
        logic.begin_move(segmentation)
        logic.set_move(segmentation, translation_ras=[6.0, 0.0, 0.0])
        logic.apply_move(segmentation)
        moved = logic.label_array(segmentation)[0]
        self.assertTrue(logic.undo_tumour_edit(segmentation))
        logic.shift_tumour(segmentation, [6.0, 0.0, 0.0])
        self.assertTrue(np.array_equal(logic.label_array(segmentation)[0], moved))
        self.assertTrue(logic.undo_tumour_edit(segmentation))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")


def _ijkToRas(volumeNode):
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return matrix
