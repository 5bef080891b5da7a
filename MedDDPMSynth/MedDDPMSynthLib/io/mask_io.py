"""Reading label masks and images (NIfTI, NRRD, MetaImage) with every check that must come before any
geometry, and listing the image files of a folder: the one checked reader of the engine.

A mask must be one scalar 3-D volume of finite values, of a sane size. ITK's NIfTI reader hides two
problems (it zero-fills truncated files and turns NaN into 0), so NIfTI voxel data are checked directly.
"""

from __future__ import annotations

import errno
import gzip
import io
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedDDPMSynthLib.errors import InputError
from MedDDPMSynthLib.domain.labels import MAX_VOXELS
from MedDDPMSynthLib.io.outputs import image_extension

MASK_SUFFIXES = ".nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd"


def check_mask_path(path, role: str = "mask") -> Path:
    """``path`` as a Path if it names a readable regular file; else an InputError. A FIFO or device
    would block the reader forever, a symlink loop never resolves."""
    path = Path(path)
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"the {role} file {path} is a symbolic link that points to itself (a loop); "
                             "give the real file") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise InputError(f"the {role} file name {str(path)[:60]}... is too long; check the path") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise InputError(f"no permission to read the {role} file {path}; check its permissions") from None
        raise InputError(f"the {role} file {path} does not exist; check the path") from None
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a {role} file; give a single {MASK_SUFFIXES} file")
    if not path.is_file():
        raise InputError(f"{path} is not a regular file (a pipe, socket or device); give a {MASK_SUFFIXES} file")
    return path


def read_mask(path, role: str = "mask") -> sitk.Image:
    """Read a scalar 3-D label image, or raise an :class:`InputError` saying what is wrong and how to fix it.
    ``role`` names the file in messages: "mask", or "scan" for an intensity image read with the same checks."""
    path = check_mask_path(path, role)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        # The header alone tells the dimension and pixel type: refuse early without reading the voxels.
        reader.ReadImageInformation()
        _check_header(path, reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize())
        _check_nifti_spacing(path)
        _check_nifti_data(path, role)
        image = _squeeze_fourth_axis(reader.Execute())
    except RuntimeError:
        raise InputError(
            f"{path} could not be read as an image (corrupt, incomplete or unsupported format); "
            f"give a {MASK_SUFFIXES} {'label' if role == 'mask' else role} file"
        ) from None
    _check_not_single_slice(path, image)
    _check_spacing(path, image.GetSpacing())
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        _check_finite(path, image, role)
    return image


def read_image(path, role: str = "image") -> sitk.Image:
    """A scalar 3-D intensity image as float32 with every check of :func:`read_mask` (readable, one 3-D
    volume, sane size and spacing, finite values); ``role`` names it in messages ("image", "scan"...)."""
    return sitk.Cast(read_mask(path, role), sitk.sitkFloat32)


def list_images(folder) -> list[Path]:
    """The image files at the top of ``folder`` (sorted; hidden files such as staging leftovers skipped)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".") and image_extension(p))


def _check_spacing(path: Path, spacing) -> None:
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(
            f"{path} has voxel spacing {tuple(float(s) for s in spacing)} in its header; every spacing must be a "
            "positive number of mm: fix the header (e.g. re-export the file) so that sizes in mm are right"
        )


def _check_nifti_spacing(path: Path) -> None:
    """ITK reads a NIfTI pixdim of 0 or NaN as 1 mm without a word; read the header's own values."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return
    import nibabel

    try:  # the raw header: nibabel.load repairs a zero pixdim to 1 as well
        with open(path, "rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as stream:
            raw = stream.read(540)
        kind = nibabel.Nifti2Header if int.from_bytes(raw[:4], "little") in (540, 0x1C020000) else nibabel.Nifti1Header
        header = kind.from_fileobj(io.BytesIO(raw), check=False)
        pixdim = [float(v) for v in header["pixdim"][1:4]]
    except Exception:  # not parseable by nibabel: SimpleITK reports what it makes of the file
        return
    if not all(np.isfinite(v) and v != 0 for v in pixdim):  # the sign is ITK's business (it uses |pixdim|)
        _check_spacing(path, pixdim)


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


def _check_nifti_data(path: Path, role: str = "mask") -> None:
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
        raise InputError(f"{path} contains NaN or infinite values; {_finite_advice(role)}")


def _squeeze_fourth_axis(image: sitk.Image) -> sitk.Image:
    if image.GetDimension() == 4:
        return sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
    return image


def _check_not_single_slice(path: Path, image: sitk.Image) -> None:
    if min(image.GetSize()) < 2:
        raise InputError(f"{path} is a single slice of size {image.GetSize()}; give a 3-D label volume")


def _finite_advice(role: str) -> str:
    if role == "mask":
        return "give an integer label map"
    article = "an" if role[:1] in "aeiou" else "a"
    return f"give {article} {role} with finite intensities (e.g. replace NaN by 0 in it)"


def _check_finite(path: Path, image: sitk.Image, role: str = "mask") -> None:
    # A float mask may still be a valid label map (BraTS files are float64), but NaN/Inf has no label.
    if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
        raise InputError(f"{path} contains NaN or infinite values; {_finite_advice(role)}")
