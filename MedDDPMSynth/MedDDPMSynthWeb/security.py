"""Access token (checked on every request) and upload checks for the browser front: safe by default,
loopback only, and a token required when serving beyond it."""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import tempfile
from pathlib import Path

import SimpleITK as sitk
from aiohttp import web

TOKEN_ENV = "MEDDDPMSYNTH_TOKEN"
TOKEN_COOKIE = "medddpm_token"
TOKEN_KEY = web.AppKey("medddpm_token", object)  # the expected token (None: open, loopback only)
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


def _given_token(request: web.Request) -> str | None:
    return (request.query.get("token") or request.headers.get("X-MedDDPM-Token")
            or request.cookies.get(TOKEN_COOKIE))


@web.middleware
async def token_middleware(request: web.Request, handler):
    """Every request (page, scripts, websocket, download) must carry the token when one is set."""
    expected = request.app[TOKEN_KEY]
    if not token_ok(_given_token(request), expected):
        return web.Response(status=403, text="403: wrong or missing access token (open the URL printed by "
                                             "'medddpm-synth serve', which carries ?token=...)")
    response = await handler(request)
    if expected and request.query.get("token") and not response.prepared:
        # first visit with ?token=: keep it for the page's own requests (scripts, websocket, download)
        response.set_cookie(TOKEN_COOKIE, expected, httponly=True, samesite="Strict")
    return response
