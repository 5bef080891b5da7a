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


def _drag(view, start: tuple[float, float], end: tuple[float, float], moves: int = 6) -> tuple:
    """A left-button drag from ``start`` to ``end`` (fractions of the view); the RAS points under them."""
    interactor = view.render_window().GetInteractor()
    width, height = view.render_window().GetSize()
    (x0, y0), (x1, y1) = [(int(width * fx), int(height * fy)) for fx, fy in (start, end)]
    xy_to_ras = view.get_view_node().GetXYToRAS()
    ras = [np.array(xy_to_ras.MultiplyPoint((float(x), float(y), 0.0, 1.0))[:3]) for x, y in ((x0, y0), (x1, y1))]
    interactor.SetEventPosition(x0, y0)
    interactor.InvokeEvent("MouseMoveEvent")
    interactor.InvokeEvent("LeftButtonPressEvent")
    for k in range(1, moves + 1):
        interactor.SetEventPosition(x0 + (x1 - x0) * k // moves, y0 + (y1 - y0) * k // moves)
        interactor.InvokeEvent("MouseMoveEvent")
    interactor.InvokeEvent("LeftButtonReleaseEvent")
    return ras


def test_move_mode_drag_scale_apply_cancel_undo_in_the_served_app(tmp_path):
    """Move mode in the served app: a drag in the axial view moves the tumour by the dragged RAS vector (in
    that plane), the slider scales it, Apply makes one edit (Undo restores), Cancel changes nothing; the
    drag never reaches the segment editor or window/level."""
    from trame.app import get_server
    from trame_slicer.segmentation import SegmentationEffectPaint

    from MedDDPMSynthWeb.app import SynthWebApp

    app = SynthWebApp(get_server("move_test", client_type="vue3"), work_dir=tmp_path)
    app.state.ready()  # as when the server starts: the slider's state changes reach their listener
    app.session.load_mask(sitk.ReadImage(str(MASK)), "demo_mask")
    app._show_mask()
    logic, segmentation = app.session.logic, app.session.segmentation
    before, ijk_to_ras = logic.label_array(segmentation)

    def centre(labels):
        return (ijk_to_ras @ np.r_[np.argwhere(labels == 2)[:, ::-1].mean(0), 1.0])[:3]

    view = app.slicer_app.view_manager.get_slice_views()[0]
    view.render_window().SetSize(400, 600)
    view.render()
    app.editor_logic.segmentation_editor.set_active_effect_type(SegmentationEffectPaint)  # must not paint
    nodes = app.slicer_app.scene.GetNumberOfNodes()
    app.server.controller.synth_move_begin()
    assert app.state.synth_moving and app.session.moving
    start, end = _drag(view, (0.5, 0.5), (0.56, 0.53))
    assert app.session.message.startswith("preview: ")
    np.testing.assert_allclose(app.session.move_translation, end - start, atol=1e-6)
    assert abs(end - start)[:2].max() > 5.0 and abs(end - start)[2] < 1e-6  # in the axial plane
    np.testing.assert_array_equal(logic.label_array(segmentation)[0], before)  # nothing written yet
    app.server.controller.synth_move_apply()
    moved, _ = logic.label_array(segmentation)
    np.testing.assert_allclose(centre(moved) - centre(before), end - start, atol=1.5)  # a voxel (1.5 mm)
    assert not app.state.synth_moving and app.slicer_app.scene.GetNumberOfNodes() == nodes
    assert 0.9 * (before == 2).sum() < (moved == 2).sum() <= (before == 2).sum()  # moved, not painted (Paint is on)
    assert logic.edit_history(segmentation)[-1]["op"] == "affine"
    app.server.controller.synth_undo()
    np.testing.assert_array_equal(logic.label_array(segmentation)[0], before)

    app.server.controller.synth_move_begin()  # the slider scales about the centre; Cancel drops it
    app.state.synth_move_scale = 1.3
    app.state.flush()
    assert app.session.move_scale == pytest.approx(1.3) and app.session.message.startswith("preview: ")
    app.server.controller.synth_move_cancel()
    np.testing.assert_array_equal(logic.label_array(segmentation)[0], before)
    assert app.slicer_app.scene.GetNumberOfNodes() == nodes and not app.state.synth_moving

    app.server.controller.synth_move_begin()
    app.state.synth_move_scale = 1.3
    app.state.flush()
    app.server.controller.synth_move_apply()
    scaled, _ = logic.label_array(segmentation)
    assert 1.8 < (scaled == 2).sum() / (before == 2).sum() < 2.6  # ~1.3^3
    np.testing.assert_allclose(centre(scaled), centre(before), atol=1.5)
    _stroke(view, (0.6, 0.4))  # out of move mode a drag is the editor's again: it paints (as the paint test)
    assert (logic.label_array(segmentation)[0] == 2).sum() > (scaled == 2).sum()
    app._close()


# ------------------------------------------------------------------------ hostile or odd input (issue 20)


def _served_app(tmp_path, name: str, **kwargs):
    from trame.app import get_server

    from MedDDPMSynthWeb.app import SynthWebApp

    return SynthWebApp(get_server(name, client_type="vue3"), work_dir=tmp_path, **kwargs)


def _send_upload(app, *chunks) -> None:
    """What the page's upload button sends: each chunk a list of files, then the empty end marker."""
    import asyncio

    async def send():
        for chunk in chunks:
            await app.ui.upload.load_chunk(chunk)
        await app.ui.upload.load_chunk([])

    asyncio.run(send())


def _file(path, name=None) -> dict:
    data = path.read_bytes()
    return {"name": name or path.name, "size": len(data), "type": "", "content": data}


def test_a_refused_upload_never_wedges_the_upload(tmp_path):
    """Unknown labels, malformed entries, two files, too many bytes over several chunks: each refused with
    one message, and the next good upload loads (before, unknown labels left every later upload refused
    as "one mask file at a time")."""
    app = _served_app(tmp_path, "wedge_test", upload_limit=4 * MASK.stat().st_size)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(MASK)))
    labels[labels == 2] = 7  # a label the whole-head model does not know
    odd = tmp_path / "odd.nii.gz"
    odd_image = sitk.GetImageFromArray(labels)
    odd_image.CopyInformation(sitk.ReadImage(str(MASK)))
    sitk.WriteImage(odd_image, str(odd))

    bad_uploads = {
        "do not fit the model": [[_file(odd)]],
        "malformed": [[{"name": "x.nii.gz", "content": "not bytes"}]],
        "malformed ": [["just a string"]],
        "one mask file at a time": [[_file(MASK), _file(MASK, "again.nii.gz")]],
        # files sent in several chunks pile up in the button's buffer: the second one is refused at once
        "one mask file at a time ": [[_file(MASK)], [_file(MASK, "b.nii.gz")], [_file(MASK, "c.nii.gz")]],
        "upload limit": [[{**_file(MASK), "content": b"\0" * (5 * MASK.stat().st_size)}]],
    }
    for phrase, chunks in bad_uploads.items():
        _send_upload(app, *chunks)
        assert phrase.strip() in app.state.synth_error, (phrase, app.state.synth_error)
        assert app.ui.upload.files == [] and app.session.segmentation is None
        assert not _node_ids(app.session.scene, "vtkMRMLSegmentationNode")
    _send_upload(app, [_file(MASK)])
    assert app.state.synth_mask == "demo_mask" and app.state.synth_error == ""
    # and once a mask is loaded, a refused one keeps it
    _send_upload(app, [_file(odd)])
    assert "do not fit the model" in app.state.synth_error and app.session.mask_name == "demo_mask"
    assert len(_node_ids(app.session.scene, "vtkMRMLSegmentationNode")) == 1
    app._close()


def test_the_model_choice_is_a_catalogue_name_or_demo(tmp_path):
    with pytest.raises(MedDDPMError, match="unknown model"):
        _served_app(tmp_path, "model_path_test", model=str(MASK))  # a server path, even an existing file
    assert not list(tmp_path.iterdir())  # the refused start left no session folder
    app = _served_app(tmp_path, "model_choice_test")
    assert app.state.synth_models == ["demo"]
    app.session.load_mask(sitk.ReadImage(str(MASK)), "demo_mask")
    for path in ("/etc/shadow", "/etc/passwd", str(REPO / "Testing" / "Data" / "official" / "tiny_wholehead_ckpt.pt")):
        app.state.synth_model = path
        app._on_model_changed(path)
        assert "unknown model" in app.state.synth_error and "choose one of demo" in app.state.synth_error
        app.request("generate")
        assert "unknown model" in app.state.synth_error and not app.session.busy and not app.session.queue
    app._close()


def test_the_generate_queue_is_bounded(tmp_path):
    from MedDDPMSynthSlicerLib import GenerationSettings
    from MedDDPMSynthWeb.session import MAX_QUEUED

    session = WebSession(new_scene(), tmp_path)
    session.load_mask(sitk.ReadImage(str(MASK)), "demo_mask")
    settings = GenerationSettings(model="demo", sampler="ddim", steps=2)
    try:
        session.request("generate", settings)  # starts the engine
        assert session.busy
        for _ in range(MAX_QUEUED):
            session.request("generate", settings)
        with pytest.raises(MedDDPMError, match=f"already waiting \\(at most {MAX_QUEUED}\\)"):
            session.request("generate", settings)
        assert len(session.queue) == MAX_QUEUED
    finally:
        session.close()


def test_an_absurd_shift_is_refused_not_a_silent_removal(tmp_path):
    session = WebSession(new_scene(), tmp_path)
    session.load_mask(sitk.ReadImage(str(MASK)), "demo_mask")
    before = session.tumour_voxels()
    for vector in ([1e308, 0.0, 0.0], [0.0, -1e308, 1e308], [5000.0, 0.0, 0.0]):
        with pytest.raises(MedDDPMError, match="longer than the mask is across"):
            session.edit("shift", vector)
        assert session.tumour_voxels() == before > 0
    session.close()
