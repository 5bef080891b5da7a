"""Reading label masks (NIfTI, NRRD, MetaImage) with every check that must come before any geometry.

A mask must be one scalar 3-D volume of finite values, of a sane size. ITK's NIfTI reader hides two
problems (it zero-fills truncated files and turns NaN into 0), so NIfTI voxel data are checked directly.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .labels import MAX_VOXELS

MASK_SUFFIXES = ".nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd"


def read_mask(path) -> sitk.Image:
    """Read a scalar 3-D label image, or raise an :class:`InputError` saying what is wrong and how to fix it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"the mask file {path} does not exist; check the path")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a mask file; give a single {MASK_SUFFIXES} file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        # The header alone tells the dimension and pixel type: refuse early without reading the voxels.
        reader.ReadImageInformation()
        _check_header(path, reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize())
        _check_nifti_data(path)
        image = _squeeze_fourth_axis(reader.Execute())
    except RuntimeError:
        raise InputError(
            f"{path} could not be read as an image (corrupt, incomplete or unsupported format); "
            f"give a {MASK_SUFFIXES} label file"
        ) from None
    _check_not_single_slice(path, image)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        _check_finite(path, image)
    return image


def _check_header(path: Path, dimension: int, components: int, size) -> None:
    if components != 1:
        raise InputError(
            f"{path} has {components} values per voxel (vector, RGB or complex image); give a label map "
            "with one integer label per voxel"
        )
    if dimension < 3:
        raise InputError(f"{path} is a {dimension}-D image of size {tuple(size)}; give a 3-D label volume")
    # A trailing time axis of length 1 (common in NRRD) is still one volume; more is a series.
    if dimension > 4 or (dimension == 4 and size[3] != 1):
        raise InputError(
            f"{path} is a {dimension}-D image of size {tuple(size)} (a series of volumes); give a single 3-D label volume"
        )
    voxels = int(np.prod([int(s) for s in size[:3]], dtype=np.int64))
    if voxels > MAX_VOXELS:  # from the header: never read (or allocate) such a volume
        raise InputError(
            f"{path} has {voxels:,} voxels (size {tuple(size[:3])}), more than the {MAX_VOXELS:,} a brain mask "
            "needs; crop or downsample it first"
        )


def _check_nifti_data(path: Path) -> None:
    """What ITK's NIfTI reader hides: it zero-fills the missing voxels of a truncated .nii/.nii.gz and
    turns NaN/Inf into 0 without a word (NRRD and MetaImage keep both visible). So stream the voxel bytes
    once: their length must be what the header promises, and float labels must be finite."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return
    import nibabel

    try:
        header = nibabel.load(str(path)).header  # reads the header only
        offset = int(header.get_data_offset())
        dtype = header.get_data_dtype()
        expected = offset + int(np.prod(header.get_data_shape(), dtype=np.int64)) * int(dtype.itemsize)
    except Exception:  # not parseable by nibabel: SimpleITK reports what it makes of the file
        return
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    length, finite, pending = 0, True, b""
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as stream:
            while block := stream.read(1 << 22):
                voxels = block[max(0, offset - length): max(0, expected - length)]  # not header, not trailing
                length += len(block)
                if dtype.kind == "f" and finite:
                    data = pending + voxels
                    usable = len(data) - len(data) % dtype.itemsize
                    finite = bool(np.isfinite(np.frombuffer(data[:usable], dtype=dtype)).all())
                    pending = data[usable:]
    except (EOFError, OSError, zlib.error):
        length = -1  # the compressed stream ends early or is damaged
    if length < expected:
        raise InputError(
            f"{path} is truncated or damaged (its voxel data ends before the size its header gives); "
            "copy or export the mask again"
        )
    if not finite:
        raise InputError(f"{path} contains NaN or infinite values; give an integer label map")


def _squeeze_fourth_axis(image: sitk.Image) -> sitk.Image:
    if image.GetDimension() == 4:
        return sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
    return image


def _check_not_single_slice(path: Path, image: sitk.Image) -> None:
    if min(image.GetSize()) < 2:
        raise InputError(f"{path} is a single slice of size {image.GetSize()}; give a 3-D label volume")


def _check_finite(path: Path, image: sitk.Image) -> None:
    # A float mask may still be a valid label map (BraTS files are float64), but NaN/Inf has no label.
    if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
        raise InputError(f"{path} contains NaN or infinite values; give an integer label map")
