"""Move the tumour with a transform node: begin, preview, apply (one engine edit), cancel. MRML only.

:meth:`MoveMixin.begin_move` puts a copy of the tumour segment(s) (the "ghost", outlined) under a new
``vtkMRMLLinearTransformNode`` whose interaction handles Slicer shows in the slice and 3-D views; the
segmentation itself is never transformed. :meth:`preview_move` runs the engine's
:func:`tumour_edit.affine_preview` (the same edit as Apply, on the part of the grid it can change) and
shows where the tumour lands, clipped to the head/brain, as a filled "landing" segmentation.
:meth:`apply_move` turns the transform's matrix into ONE :func:`tumour_edit.affine` edit through the scene
logic's edit path (one Undo step, in the edit history); :meth:`cancel_move` removes every node the move
added. The segmentation and the rest of the scene change only on Apply.

The transform node's matrix maps the ghost (the tumour where it is) to where it should go, in RAS; the
engine works in LPS: M_lps = F M_ras F, t_lps = F t_ras with F = diag(-1, -1, 1).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import vtk

from MedDDPMSynthLib.domain import tumour_edit
from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.geometry import LPS_FROM_RAS, ras_to_lps

from . import segments
from .scene_io import node_ids, numpy_of, ras_matrix_of, scene_guard, update_node_from_array, vtk_matrix_of


def _matrix_of(transform_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(matrix)
    return numpy_of(matrix)


def set_matrix(transform_node, matrix_ras: np.ndarray) -> None:
    """Set a linear transform node's 4x4 (RAS) as the interaction handles would."""
    transform_node.SetMatrixTransformToParent(vtk_matrix_of(matrix_ras))


def move_matrix(centre_ras, translation_ras=(0.0, 0.0, 0.0), scale=1.0, angles_ras_deg=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 RAS matrix of a scaling, then a rotation (degrees about R, then A, then S, as
    :meth:`SceneLogic.rotate_tumour`), both about ``centre_ras``, then a translation."""
    rotation = LPS_FROM_RAS @ tumour_edit.rotation_matrix(ras_to_lps(angles_ras_deg)) @ LPS_FROM_RAS
    linear = rotation @ (np.diag(np.broadcast_to(np.asarray(scale, float), 3)))
    c = np.asarray(centre_ras, float)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = c - linear @ c + np.asarray(translation_ras, float)
    return matrix


class MoveMixin:
    """The move methods of :class:`logic.SceneLogic` (needs its ``scene``, ``label_map`` and ``_edit``)."""

    def _moves(self) -> dict:
        moves = self.__dict__.setdefault("_move_state", {})
        for key in [k for k, m in moves.items() if not all(self.scene.GetNodeByID(i) is n for i, n in (
                (k, m["segmentation"]), (m["transform_id"], m["transform"]), (m["landing_id"], m["landing"])))]:
            self._remove_move_nodes(moves.pop(key))  # the scene was closed or a node of the move removed
        return moves

    def _remove_move_nodes(self, move) -> None:
        """Remove the nodes the move added that are still in the scene (by object: a closed scene reuses
        IDs for other nodes)."""
        for node_id, node in reversed(move["nodes"]):
            if self.scene.GetNodeByID(node_id) is node and not node.GetSingletonTag():
                self.scene.RemoveNode(node)

    def _move(self, segmentation_node) -> dict:
        move = self._moves().get(segmentation_node.GetID()) if segmentation_node is not None else None
        if move is None:
            raise InputError("no tumour move in progress for this segmentation; click 'Move tumour' first")
        return move

    def is_moving(self, segmentation_node) -> bool:
        return segmentation_node is not None and segmentation_node.GetID() in self._moves()

    def move_transform(self, segmentation_node):
        """The transform node of the move in progress (None if there is none)."""
        return self._moves()[segmentation_node.GetID()]["transform"] if self.is_moving(segmentation_node) else None

    def begin_move(self, segmentation_node, reference_volume=None, mapping=None, family="whole_head",
                   component=None, show_handles: bool = True):
        """Start moving the tumour; returns the linear transform node to drag (its centre of transformation
        is the tumour's centroid, so rotation and scaling handles act about it, as the engine does)."""
        family = self.family_of_segmentation(segmentation_node, family)
        self.cancel_move(segmentation_node)  # one move per segmentation
        export = self.label_map(segmentation_node, reference_volume, mapping, family)
        tissues = [(t, s) for t, s in export.mapping.ordered() if t != family.tissue_name]
        if not tissues:
            raise InputError(f"segmentation '{segmentation_node.GetName()}' has no tumour segment to move; add a "
                             "segment named 'tumour' (or map one) first")
        labels = sitk.GetArrayFromImage(export.image)
        official = dict(zip(family.condition_names, family.condition_labels))
        values = [official[t] for t, _ in tissues]
        lut = np.zeros(256, np.uint8)
        for n, value in enumerate(values, start=1):
            lut[value] = n
        tumour = lut[labels]
        if not tumour.any():
            raise InputError("the tumour segment(s) are empty; paint a tumour before moving it")
        centre_kji = np.argwhere(tumour > 0).mean(0)
        centre_ras = (export.ijk_to_ras @ np.r_[centre_kji[::-1], 1.0])[:3]
        name = segmentation_node.GetName()
        before = node_ids(self.scene)
        with scene_guard(self.scene, keep=[]) as kept:
            transform = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode",
                                                     self.scene.GenerateUniqueName(f"{name} move"))
            transform.SetCenterOfTransformation([float(v) for v in centre_ras])
            ghost, _ = self._tumour_copy(f"{name} move (drag)", segmentation_node, tissues, tumour, export.ijk_to_ras)
            ghost.SetAndObserveTransformNodeID(transform.GetID())
            landing, landing_ids = self._tumour_copy(f"{name} move (lands here)", segmentation_node, tissues, tumour,
                                                     export.ijk_to_ras)
            self._style(ghost, landing)
            if show_handles:
                self._show_handles(transform)
            kept.extend([transform, ghost, landing])
        self._moves()[segmentation_node.GetID()] = {
            "segmentation": segmentation_node, "transform": transform, "transform_id": transform.GetID(),
            "landing": landing, "landing_ids": landing_ids, "values": values,
            "export": export, "family": family, "reference": reference_volume, "mapping": export.mapping,
            "component": component, "centre_ras": centre_ras, "landing_id": landing.GetID(),
            "nodes": [(i, self.scene.GetNodeByID(i)) for i in sorted(node_ids(self.scene) - before)],
            "last": None}
        return transform

    def _tumour_copy(self, name, source, tissues, tumour, ijk_to_ras):
        """A new segmentation holding the tumour (cropped to its box: small whatever the grid), one segment
        per tumour layer, named and coloured as the source's; (node, its segment IDs in layer order)."""
        from slicer import vtkSlicerSegmentationsModuleLogic

        low = np.argwhere(tumour > 0).min(0)
        high = np.argwhere(tumour > 0).max(0) + 1
        matrix = ijk_to_ras.copy()
        matrix[:3, 3] += ijk_to_ras[:3, :3] @ low[::-1]
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", self.scene.GenerateUniqueName(name))
        node.SetHideFromEditors(True)  # a helper of the move: never offered as the input segmentation
        node.CreateDefaultDisplayNodes()  # before any segment: views observing the scene expect one
        with scene_guard(self.scene):  # new segments come from a labelmap import (one per label value)
            labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__MedDDPMSynth_temp__")
            update_node_from_array(labelmap, tumour[low[0]:high[0], low[1]:high[1], low[2]:high[2]], matrix)
            if not vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node, ""):
                raise InputError(f"could not copy the tumour of '{source.GetName()}' for the move; try again")
        segmentation = node.GetSegmentation()
        by_value = {segmentation.GetNthSegment(n).GetLabelValue(): segmentation.GetNthSegmentID(n)
                    for n in range(segmentation.GetNumberOfSegments())}
        ids = []
        for value, (_, segment_id) in enumerate(tissues, start=1):
            if value in by_value:  # a layer empty at the start stays empty (an edit never creates one)
                original = source.GetSegmentation().GetSegment(segment_id)
                copy = segmentation.GetSegment(by_value[value])
                copy.SetName(original.GetName())
                copy.SetColor(original.GetColor())
            ids.append(by_value.get(value))
        return node, ids

    @staticmethod
    def _style(ghost, landing) -> None:
        for node, fill, opacity3d in ((ghost, 0.0, 0.3), (landing, 0.6, 1.0)):
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            if display is not None:  # the ghost as an outline (what is dragged), the landing filled
                display.SetOpacity2DFill(fill)
                display.SetOpacity3D(opacity3d)

    @staticmethod
    def _show_handles(transform) -> None:
        """Slicer's interaction handles (translate, rotate, scale) in the 3-D and the slice views."""
        transform.CreateDefaultDisplayNodes()
        display = transform.GetDisplayNode()
        if display is None:
            return
        display.SetVisibility(False)  # no displacement glyphs: only the handles
        display.SetEditorVisibility(True)
        display.SetEditorSliceIntersectionVisibility(True)
        for setter in ("SetEditorTranslationEnabled", "SetEditorRotationEnabled", "SetEditorScalingEnabled",
                       "SetEditorTranslationSliceEnabled", "SetEditorRotationSliceEnabled",
                       "SetEditorScalingSliceEnabled"):
            if hasattr(display, setter):  # the *Slice* switches exist from Slicer 5.7 on
                getattr(display, setter)(True)

    def set_move(self, segmentation_node, translation_ras=(0.0, 0.0, 0.0), scale=1.0,
                 angles_ras_deg=(0.0, 0.0, 0.0)) -> None:
        """Set the move's transform to a translation (RAS mm), scale and rotation about the tumour centre
        (what a drag and a scale slider do; the handles set the same matrix)."""
        move = self._move(segmentation_node)
        set_matrix(move["transform"], move_matrix(move["centre_ras"], translation_ras, scale, angles_ras_deg))

    def _lps(self, move):
        matrix = _matrix_of(move["transform"])
        return LPS_FROM_RAS @ matrix[:3, :3] @ LPS_FROM_RAS, LPS_FROM_RAS @ matrix[:3, 3]

    def preview_move(self, segmentation_node) -> dict:
        """Show where the tumour lands with the transform as it is now, clipped as Apply will clip it;
        returns the engine's record (``clipped_voxels``). Cheap: only the part of the grid the move can
        change is computed, and an unchanged transform is not computed again."""
        move = self._move(segmentation_node)
        matrix, translation = self._lps(move)
        key = (matrix.round(9).tobytes(), translation.round(6).tobytes())
        if move["last"] is not None and move["last"][0] == key:
            return move["last"][1]
        ids, lut = vtk.vtkStringArray(), np.zeros(256, np.uint8)
        for value, segment_id in zip(move["values"], move["landing_ids"]):
            if segment_id is not None:
                ids.InsertNextValue(segment_id)
                lut[value] = ids.GetNumberOfValues()
        try:
            image, record = tumour_edit.affine_preview(move["export"].image, move["family"].name, matrix, translation,
                                                      move["component"], pivot_mm=(0.0, 0.0, 0.0))
        except InputError:
            empty = np.zeros((1, 1, 1), np.uint8)  # nothing lands: show nothing, then say why
            segments._import(self.scene, move["landing"], empty, move["export"].ijk_to_ras, ids)
            move["last"] = None
            raise
        segments._import(self.scene, move["landing"], lut[sitk.GetArrayFromImage(image)], ras_matrix_of(image), ids)
        move["last"] = (key, record)
        return record

    def apply_move(self, segmentation_node) -> dict:
        """Turn the transform into one engine edit of the segmentation (one Undo step) and end the move.
        The record's ``clipped_voxels`` says how much of the tumour the head/brain clipped. On an error
        (e.g. the whole tumour outside the head) the move stays, so the transform can be corrected."""
        move = self._move(segmentation_node)
        matrix, translation = self._lps(move)
        record = self._edit(segmentation_node, move["reference"], move["mapping"], move["family"],
                            lambda m, f: tumour_edit.affine(m, f, matrix, translation, move["component"],
                                                           pivot_mm=(0.0, 0.0, 0.0)))
        record["transform_ras"] = _matrix_of(move["transform"]).tolist()
        self.cancel_move(segmentation_node)
        return record

    def cancel_move(self, segmentation_node) -> None:
        """End the move without an edit: every node it added leaves the scene; the segmentation was never
        changed."""
        move = self._moves().pop(segmentation_node.GetID(), None) if segmentation_node is not None else None
        if move is not None:
            self._remove_move_nodes(move)
