"""Moving the tumour with a transform node, on a real vtkMRMLScene: a translation, rotation or scaling set
on the move's transform (as Slicer's handles set it) and applied gives exactly the labels of the engine's
shift / rotate / scale; preview shows the clipped landing Apply writes; cancel leaves every voxel and node;
undo restores; a move out of the head is clipped as the engine clips it, and reported."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from slicer_scene_helpers import add_segmentation, matrix, new_scene, standard_head

from MedDDPMSynthLib.domain import tumour_edit
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthSlicerLib import SceneLogic, ras_to_lps
from MedDDPMSynthSlicerLib.move import set_matrix
from MedDDPMSynthSlicerLib.scene_io import node_ids

NAMES = {1: "head", 2: "Tumour"}


def _setup(kind):
    scene = new_scene()
    segmentation, reference = add_segmentation(scene, standard_head(), matrix(kind), NAMES)
    return scene, SceneLogic(scene), segmentation, reference


def _landing(scene, logic, segmentation, reference):
    """The move's landing preview as a (K, J, I) boolean array on the segmentation's grid."""
    from MedDDPMSynthSlicerLib import segments

    landing = logic._moves()[segmentation.GetID()]["landing"]
    values, _, _ = segments._export(scene, landing, segments.segment_ids(landing), reference)
    return values > 0


def _rotation_about(centre, axis, degrees) -> np.ndarray:
    """What the rotation handle gives: a VTK rotation about the centre of transformation."""
    transform = vtk.vtkTransform()
    transform.Translate(*centre)
    transform.RotateWXYZ(degrees, *axis)
    transform.Translate(*(-np.asarray(centre)))
    m = transform.GetMatrix()
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.mark.parametrize("kind", ["LPS", "RAS", "oblique"])
def test_transform_then_apply_equals_shift_rotate_scale(kind):
    scene, logic, segmentation, reference = _setup(kind)
    original, _ = logic.label_array(segmentation)
    nodes = node_ids(scene)
    cases = [  # (how the transform is set, the engine edit with the same parameters)
        (lambda t, c: set_matrix(t, np.r_[np.c_[np.eye(3), [8.0, 0.0, -4.0]], [[0, 0, 0, 1]]]),
         lambda: logic.shift_tumour(segmentation, [8.0, 0.0, -4.0])),
        (lambda t, c: set_matrix(t, _rotation_about(c, (0, 0, 1), 30.0)),
         lambda: logic.rotate_tumour(segmentation, [0, 0, 30])),
        (lambda t, c: set_matrix(t, _rotation_about(c, (1, 0, 0), -20.0)),
         lambda: logic.rotate_tumour(segmentation, [-20, 0, 0])),
        (lambda t, c: logic.set_move(segmentation, scale=1.5), lambda: logic.scale_tumour(segmentation, 1.5)),
    ]
    for set_transform, engine_edit in cases:
        transform = logic.begin_move(segmentation)
        assert transform.IsA("vtkMRMLLinearTransformNode") and logic.move_transform(segmentation) is transform
        assert transform.GetDisplayNode().GetEditorVisibility()  # Slicer's handles are shown
        set_transform(transform, np.array(transform.GetCenterOfTransformation()))
        preview = logic.preview_move(segmentation)
        landing = _landing(scene, logic, segmentation, reference)
        assert logic.label_array(segmentation)[0].tolist() == original.tolist()  # a preview edits nothing
        record = logic.apply_move(segmentation)
        moved, _ = logic.label_array(segmentation)
        assert record["op"] == "affine" and not logic.is_moving(segmentation)
        assert node_ids(scene) == nodes  # the transform and the preview nodes are gone
        # the preview shows what Apply writes; on an oblique grid the preview's crop has its own origin (float
        # rounding), so a voxel centre mapped exactly half way between two voxels (here: scaling a ball by
        # 1.5 about a centroid on a voxel corner) may round the other way
        mismatch = int((landing != (moved == 2)).sum())
        assert mismatch == 0 if kind != "oblique" else mismatch <= 0.06 * (moved == 2).sum()
        assert abs(preview["voxels_after"] - record["voxels_after"]) <= mismatch
        assert logic.edit_history(segmentation)[-1]["op"] == "affine"

        assert logic.undo_tumour_edit(segmentation)  # one Undo step restores the segmentation
        np.testing.assert_array_equal(logic.label_array(segmentation)[0], original)
        engine_edit()
        np.testing.assert_array_equal(logic.label_array(segmentation)[0], moved)
        assert logic.undo_tumour_edit(segmentation) and not logic.can_undo(segmentation)
        assert not (moved == original).all()


def test_cancel_leaves_every_voxel_and_node():
    scene, logic, segmentation, _ = _setup("oblique")
    original, _ = logic.label_array(segmentation)
    nodes = {i: scene.GetNodeByID(i) for i in node_ids(scene)}
    transform = logic.begin_move(segmentation)
    assert len(node_ids(scene)) > len(nodes)
    logic.set_move(segmentation, translation_ras=(12.0, -8.0, 4.0), scale=0.8, angles_ras_deg=(0, 10, 0))
    logic.preview_move(segmentation)
    assert segmentation.GetParentTransformNode() is None  # only the copy is under the transform
    logic.cancel_move(segmentation)
    assert {i: scene.GetNodeByID(i) for i in node_ids(scene)} == nodes
    assert not scene.IsNodePresent(transform) and not logic.is_moving(segmentation)
    np.testing.assert_array_equal(logic.label_array(segmentation)[0], original)
    assert not logic.can_undo(segmentation)
    with pytest.raises(InputError, match="no tumour move in progress"):
        logic.apply_move(segmentation)


def test_a_move_out_of_the_head_is_clipped_as_the_engine_clips_and_reported():
    scene, logic, segmentation, reference = _setup("RAS")
    export = logic.label_map(segmentation)
    vector = [56.0, 0.0, 0.0]  # the tumour (r 20 mm) pushed through the head's edge on the right
    expected, engine_record = tumour_edit.shift(export.image, "whole_head", ras_to_lps(vector))
    assert engine_record["clipped_voxels"] > 0
    logic.begin_move(segmentation)
    logic.set_move(segmentation, translation_ras=vector)
    preview = logic.preview_move(segmentation)
    record = logic.apply_move(segmentation)
    assert preview["clipped_voxels"] == record["clipped_voxels"] == engine_record["clipped_voxels"]
    np.testing.assert_array_equal(logic.label_array(segmentation)[0], sitk.GetArrayFromImage(expected))

    nodes = node_ids(scene)  # the whole tumour outside the head: refused, the move stays to be corrected
    logic.begin_move(segmentation)
    logic.set_move(segmentation, translation_ras=(400.0, 0.0, 0.0))
    with pytest.raises(InputError, match="whole tumour would lie outside the head"):
        logic.preview_move(segmentation)
    assert not _landing(scene, logic, segmentation, reference).any()
    with pytest.raises(InputError, match="whole tumour would lie outside the head"):
        logic.apply_move(segmentation)
    assert logic.is_moving(segmentation) and len(logic.edit_history(segmentation)) == 1
    logic.set_move(segmentation, translation_ras=(-4.0, 0.0, 0.0))
    assert logic.preview_move(segmentation)["clipped_voxels"] == 0
    logic.cancel_move(segmentation)
    assert node_ids(scene) == nodes


def test_preview_of_a_small_tumour_on_a_large_grid_computes_only_around_it():
    """The cheap path: the preview's engine edit runs on a crop around the tumour and where it lands, and
    gives the same landing and clipping as the full edit."""
    image = sitk.Image([128, 128, 96], sitk.sitkUInt8)
    image.SetSpacing((1.0, 1.0, 1.5))
    labels = np.zeros((96, 128, 128), np.uint8)
    labels[8:88, 10:118, 10:118] = 1
    labels[40:50, 100:115, 60:70] = 2  # near the head's edge
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((1.0, 1.0, 1.5))
    m, t = np.diag([1.2, 1.0, 0.9]), [0.0, 9.0, 3.0]
    full, full_record = tumour_edit.affine(image, "whole_head", m, t)
    crop, crop_record = tumour_edit.affine_preview(image, "whole_head", m, t)
    assert np.prod(crop.GetSize()) < 0.02 * np.prod(image.GetSize())
    assert crop_record["clipped_voxels"] == full_record["clipped_voxels"] > 0
    index = full.TransformPhysicalPointToIndex(crop.GetOrigin())
    region = sitk.GetArrayFromImage(full)[index[2]:index[2] + crop.GetSize()[2], index[1]:index[1] + crop.GetSize()[1],
                                          index[0]:index[0] + crop.GetSize()[0]]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(crop), region)
    assert (sitk.GetArrayFromImage(full) == 2).sum() == (region == 2).sum()


def test_brats_layers_move_together_and_equal_the_engine_rotation():
    """BraTS: the three tumour segments are copied, previewed and moved as one nested tumour; Apply equals
    rotate_tumour with the same angles, layer by layer."""
    scene = new_scene()
    labels = standard_head(tumour_radius_mm=20.0)
    centre = np.argwhere(labels == 2).mean(0) + [0.3, -0.2, 0.1]  # not on the grid: no ties in the layers
    distance = np.linalg.norm((np.indices(labels.shape).transpose(1, 2, 3, 0) - centre) * 4.0, axis=-1)
    brats = np.where(labels > 0, 4, 0)
    brats[labels == 2] = 2
    brats[(labels == 2) & (distance <= 12)] = 3
    brats[(labels == 2) & (distance <= 6)] = 1
    segmentation, reference = add_segmentation(scene, brats, matrix("RAS"), {4: "brain", 2: "oedema", 3: "ET",
                                                                          1: "necrotic"})
    logic = SceneLogic(scene)
    original, _ = logic.label_array(segmentation, family="brats")
    transform = logic.begin_move(segmentation, family="brats")
    landing = logic._moves()[segmentation.GetID()]["landing"]
    names = sorted(landing.GetSegmentation().GetNthSegment(n).GetName() for n in range(3))
    assert names == ["ET", "necrotic", "oedema"]
    set_matrix(transform, _rotation_about(transform.GetCenterOfTransformation(), (0, 1, 0), 35.0))
    assert logic.preview_move(segmentation)["family"] == "brats"
    logic.apply_move(segmentation)
    moved, _ = logic.label_array(segmentation, family="brats")
    assert logic.undo_tumour_edit(segmentation)
    np.testing.assert_array_equal(logic.label_array(segmentation, family="brats")[0], original)
    logic.rotate_tumour(segmentation, [0, 35, 0], family="brats")
    np.testing.assert_array_equal(logic.label_array(segmentation, family="brats")[0], moved)
    assert {1, 2, 3} <= set(np.unique(moved).tolist()) and not (moved == original).all()


def test_deleting_a_node_of_the_move_ends_it_cleanly():
    """A user deleting the move's transform (Data module) ends the move: its other nodes leave the scene,
    the segmentation is unchanged, and Apply says there is no move."""
    scene, logic, segmentation, _ = _setup("LPS")
    original, _ = logic.label_array(segmentation)
    nodes = node_ids(scene)
    transform = logic.begin_move(segmentation)
    scene.RemoveNode(transform)
    assert not logic.is_moving(segmentation) and node_ids(scene) == nodes
    with pytest.raises(InputError, match="no tumour move in progress"):
        logic.preview_move(segmentation)
    np.testing.assert_array_equal(logic.label_array(segmentation)[0], original)
