"""Access token and upload checks for the browser front (safe by default: loopback, token elsewhere)."""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import tempfile
from pathlib import Path

import SimpleITK as sitk

TOKEN_ENV = "MEDDDPMSYNTH_TOKEN"
SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
DEFAULT_UPLOAD_LIMIT = 512 * 1024 * 1024


class UploadRejected(ValueError):
    """An upload that is not a readable mask file; the message is shown in the page."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def resolve_token(host: str, token: str | None, environ=os.environ) -> tuple[str | None, bool]:
    """The token to require (``--token``, else the environment) and whether it was generated here.

    Binding beyond loopback without a token would expose the GPU to the network, so one is generated
    (and printed by the caller) rather than serving openly."""
    token = token or environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        return secrets.token_urlsafe(24), True
    return token, False


def token_ok(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a guess was right."""
    if expected is None:
        return True
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def allowed_name(filename: str) -> str:
    """The accepted suffix of an upload's name (the reader is chosen by it), else UploadRejected."""
    name = Path(filename or "").name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise UploadRejected(f"'{Path(filename or '').name}' is not a mask file; upload .nii, .nii.gz, .nrrd or .mha")


def check_size(size: int, limit: int) -> None:
    if size > limit:
        raise UploadRejected(f"the file is larger than the upload limit of {limit // (1024 * 1024)} MB")


def sniff(data: bytes, filename: str, folder: str | Path | None = None) -> tuple[Path, sitk.Image]:
    """Write the upload into a fresh private temp folder and read it with SimpleITK: a 3-D scalar
    image or UploadRejected. Returns the saved path (the caller owns its folder) and the image."""
    suffix = allowed_name(filename)
    workdir = Path(tempfile.mkdtemp(prefix="medddpm_upload_", dir=folder))
    path = workdir / f"upload{suffix}"  # never the client's name: no path tricks
    path.write_bytes(data)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        path.unlink(missing_ok=True)
        workdir.rmdir()
        raise UploadRejected(f"'{Path(filename).name}' could not be read as a {suffix} image") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        path.unlink(missing_ok=True)
        workdir.rmdir()
        raise UploadRejected("the file is not a 3-D single-channel image")
    return path, image
