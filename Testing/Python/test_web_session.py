"""The browser front's session without a browser, on a real MRML scene: a mask upload becomes a
segmentation and a grey reference volume; a bad upload leaves the scene as it was; a new mask replaces
the old nodes; tumour edits and undo go through SceneLogic; export before any result is refused."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("trame_slicer", reason="the web extra is not installed")
from slicer_scene_helpers import new_scene  # noqa: E402  (also puts the Slicer-side packages on sys.path)
from conftest import REPO  # noqa: E402
from MedDDPMSynthLib.errors import MedDDPMError  # noqa: E402
from MedDDPMSynthWeb.session import WebSession  # noqa: E402

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)

MASK = REPO / "MedDDPMSynth" / "Resources" / "Examples" / "demo_mask.nii.gz"


def _node_ids(scene, cls: str) -> list[str]:
    return [scene.GetNthNodeByClass(n, cls).GetID() for n in range(scene.GetNumberOfNodesByClass(cls))]


def test_load_replace_edit_undo(tmp_path):
    mask = sitk.ReadImage(str(MASK))
    scene = new_scene()
    session = WebSession(scene, tmp_path)
    with pytest.raises(MedDDPMError, match="generate a result first"):
        session.export_zip()
    session.load_mask(mask, "demo_mask")
    labels, ijk_to_ras = session.logic.label_array(session.segmentation)
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(mask))  # the upload's grid and labels
    assert session.tumour_voxels() == int((labels == 2).sum()) > 0
    reference = session.reference
    assert reference.GetImageData().GetDimensions() == mask.GetSize()
    segmentations = _node_ids(scene, "vtkMRMLSegmentationNode")
    assert not _node_ids(scene, "vtkMRMLLabelMapVolumeNode")  # the import's temporary labelmap is gone

    # an empty mask is refused and the scene keeps the loaded one
    empty = sitk.Image(mask.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(mask)
    with pytest.raises(MedDDPMError, match="empty"):
        session.load_mask(empty, "empty")
    assert _node_ids(scene, "vtkMRMLSegmentationNode") == segmentations and session.reference is reference

    # move the tumour 7 mm to the right (RAS), undo; remove it, undo
    before = session.tumour_voxels()
    centre = ijk_to_ras[:3, :3] @ np.argwhere(labels == 2)[:, ::-1].mean(0)
    session.edit("shift", [7.0, 0.0, 0.0])
    moved, _ = session.logic.label_array(session.segmentation)
    moved_centre = ijk_to_ras[:3, :3] @ np.argwhere(moved == 2)[:, ::-1].mean(0)
    assert moved_centre[0] - centre[0] == pytest.approx(7.0, abs=2.0)
    assert abs(session.tumour_voxels() - before) < 0.1 * before
    session.edit("undo", None)
    session.edit("remove", None)
    assert session.tumour_voxels() == 0
    session.edit("undo", None)
    restored, _ = session.logic.label_array(session.segmentation)
    np.testing.assert_array_equal(restored, labels)
    with pytest.raises(MedDDPMError, match="unknown edit"):
        session.edit("explode", None)

    # a new mask replaces the old segmentation and reference volume (no pile-up in the scene)
    session.load_mask(mask, "again")
    assert len(_node_ids(scene, "vtkMRMLSegmentationNode")) == 1 and not scene.IsNodePresent(reference)
    assert session.mask_name == "again" and session.status()["mask"] == "again"
    session.close()
    assert not session.work_dir.exists()


def _stroke(view, start: tuple[float, float], moves: int = 5) -> None:
    """A left-button drag on a view's render window: the events the browser's pointer becomes."""
    interactor = view.render_window().GetInteractor()
    width, height = view.render_window().GetSize()
    x, y = int(width * start[0]), int(height * start[1])
    interactor.SetEventPosition(x, y)
    interactor.InvokeEvent("MouseMoveEvent")
    interactor.InvokeEvent("LeftButtonPressEvent")
    for k in range(moves):
        interactor.SetEventPosition(x + 3 * k, y + 2 * k)
        interactor.InvokeEvent("MouseMoveEvent")
    interactor.InvokeEvent("LeftButtonReleaseEvent")


def test_paint_and_erase_in_the_served_app(tmp_path):
    """The served app's wiring: after an upload the segment editor edits the tumour segment on the mask's
    grid, so trame-slicer's Paint and Erase on the axial view change what the next Generate uses."""
    from trame.app import get_server
    from trame_slicer.segmentation import SegmentationEffectErase, SegmentationEffectPaint

    from MedDDPMSynthWeb.app import SynthWebApp

    app = SynthWebApp(get_server("paint_test", client_type="vue3"), work_dir=tmp_path)
    mask = sitk.ReadImage(str(MASK))
    app.session.load_mask(mask, "demo_mask")
    app._show_mask()
    before, _ = app.session.logic.label_array(app.session.segmentation)
    editor = app.editor_logic.segmentation_editor
    assert editor.get_active_segment_id() in app.session.logic.segment_mapping(
        app.session.segmentation).tumour_segments()

    view = app.slicer_app.view_manager.get_slice_views()[0]
    view.render_window().SetSize(400, 600)
    view.render()
    editor.set_active_effect_type(SegmentationEffectPaint)
    _stroke(view, (0.6, 0.4))
    painted, _ = app.session.logic.label_array(app.session.segmentation)
    assert (painted == 2).sum() > (before == 2).sum()
    assert app.state.synth_tumour_voxels == int((painted == 2).sum())  # the page's count follows the brush
    assert ((painted == 2) & (before == 1)).any()  # the brush painted tumour over brain

    editor.set_active_effect_type(SegmentationEffectErase)
    _stroke(view, (0.6, 0.4))
    erased, _ = app.session.logic.label_array(app.session.segmentation)
    assert (erased == 2).sum() < (painted == 2).sum()
    app._close()
