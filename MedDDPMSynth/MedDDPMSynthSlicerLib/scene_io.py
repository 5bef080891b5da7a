"""MRML volume nodes <-> SimpleITK images, and a guard that keeps the scene clean.

Slicer works in RAS, ITK/NIfTI files in LPS: a node's IJK->RAS matrix ``M`` becomes the ITK geometry
``diag(-1, -1, 1) @ M`` (origin = translation column, direction = columns / spacing). Only Slicer's own
matrices (``vtkMRMLVolumeNode.GetIJKToRASMatrix``) and SimpleITK are used; nothing is resampled here.

Uses only vtk, MRML (``slicer-core`` wheel or the Slicer application), numpy and SimpleITK.
"""

from __future__ import annotations

import contextlib

import numpy as np
import SimpleITK as sitk
import vtk
from vtkmodules.util import numpy_support

from MedDDPMSynthLib.domain.geometry import LPS_FROM_RAS
from MedDDPMSynthLib.domain.geometry import same_grid as _same_grid



def numpy_of(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtk_matrix_of(matrix) -> vtk.vtkMatrix4x4:
    vtk_matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtk_matrix.SetElement(r, c, float(matrix[r][c]))
    return vtk_matrix


def ijk_to_ras(node) -> np.ndarray:
    """The node's 4x4 IJK->RAS matrix as numpy."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return numpy_of(matrix)


def set_ijk_to_ras(node, matrix: np.ndarray) -> None:
    node.SetIJKToRASMatrix(vtk_matrix_of(matrix))


def itk_geometry(ijk_to_ras_matrix: np.ndarray) -> dict:
    """Spacing, origin and direction (LPS, row-major) of the grid a RAS IJK->RAS matrix describes."""
    lps = LPS_FROM_RAS @ np.asarray(ijk_to_ras_matrix, float)[:3, :]
    columns = lps[:, :3]
    spacing = np.linalg.norm(columns, axis=0)
    return {"spacing": spacing.tolist(), "origin": lps[:, 3].tolist(),
            "direction": (columns / spacing).ravel().tolist()}


def ras_matrix_of(image: sitk.Image) -> np.ndarray:
    """The IJK->RAS matrix of a SimpleITK image (the inverse of :func:`itk_geometry`)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_FROM_RAS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_FROM_RAS @ np.array(image.GetOrigin())
    return matrix


def array_from_node(node) -> np.ndarray:
    """Copy of the node's voxels as a (K, J, I) = (Z, Y, X) array (numpy order of SimpleITK)."""
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise ValueError(f"volume '{node.GetName()}' has no voxels")
    i, j, k = image.GetDimensions()
    components = image.GetNumberOfScalarComponents()
    shape = (k, j, i) if components == 1 else (k, j, i, components)
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape).copy()


def image_from_node(node) -> sitk.Image:
    """A volume node as a SimpleITK image with the same grid (LPS), voxels copied."""
    image = sitk.GetImageFromArray(array_from_node(node))
    geometry = itk_geometry(ijk_to_ras(node))
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    return image


def update_node_from_array(node, array_zyx: np.ndarray, matrix: np.ndarray) -> None:
    """Set a volume node's voxels from a (Z, Y, X) array and its IJK->RAS matrix, exactly as given."""
    array_zyx = np.ascontiguousarray(array_zyx)
    image = vtk.vtkImageData()
    image.SetDimensions(array_zyx.shape[2], array_zyx.shape[1], array_zyx.shape[0])
    scalars = numpy_support.numpy_to_vtk(array_zyx.ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    node.SetAndObserveImageData(image)
    set_ijk_to_ras(node, matrix)
    node.Modified()


def grid_of_matrix(matrix: np.ndarray, dimensions) -> dict:
    """The engine's grid dict (LPS) of an IJK->RAS matrix with these (I, J, K) dimensions."""
    return {"size": [int(d) for d in dimensions], **itk_geometry(matrix)}


def same_grid(image: sitk.Image, matrix: np.ndarray, dimensions) -> bool:
    """Whether a SimpleITK image lies on the grid of an IJK->RAS matrix with these (I, J, K) dimensions
    (the engine's same-grid test, :func:`MedDDPMSynthLib.domain.geometry.same_grid`)."""
    return _same_grid(image, grid_of_matrix(matrix, dimensions))


def same_matrix_grid(matrix_a: np.ndarray, dimensions_a, matrix_b: np.ndarray, dimensions_b) -> bool:
    """Whether two IJK->RAS matrices (with their dimensions) describe the same grid (the engine's test)."""
    return dimensions_a is not None and dimensions_b is not None and _same_grid(
        grid_of_matrix(matrix_a, dimensions_a), grid_of_matrix(matrix_b, dimensions_b))


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}


@contextlib.contextmanager
def scene_guard(scene, keep=()):
    """Remove every node the block added (temporary labelmaps, their display and colour nodes), except
    singletons (e.g. the subject hierarchy) and the nodes listed in ``keep`` (filled by the block)."""
    before = node_ids(scene)
    try:
        yield keep
    finally:
        kept = {node.GetID() for node in keep if node is not None}
        for node_id in node_ids(scene) - before - kept:
            node = scene.GetNodeByID(node_id)
            if node is not None and not node.GetSingletonTag() and not _belongs_to_kept(node, kept, scene):
                scene.RemoveNode(node)


def _belongs_to_kept(node, kept: set[str], scene) -> bool:
    """Display and storage nodes of a kept node stay with it."""
    for node_id in kept:
        owner = scene.GetNodeByID(node_id)
        if owner is None:
            continue
        if hasattr(owner, "GetNumberOfDisplayNodes") and any(
                owner.GetNthDisplayNodeID(n) == node.GetID() for n in range(owner.GetNumberOfDisplayNodes())):
            return True
        if hasattr(owner, "GetStorageNodeID") and owner.GetStorageNodeID() == node.GetID():
            return True
    return False
