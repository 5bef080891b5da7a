"""Access token (checked on every request), same-origin and Host checks, and upload checks for the
browser front: safe by default, loopback only, and a token required even there (printed in the URL, as
Jupyter does), because any web page the user visits can reach 127.0.0.1.

What is refused, before any handler runs: a request without the token; a request whose ``Origin`` is not
the page's own (another site's script opening the websocket); on a loopback bind, a ``Host`` that is not a
loopback name (DNS rebinding: a foreign name resolving to 127.0.0.1); a plain GET on the websocket route.
Uploads must be self-contained files (no MetaImage/NRRD/NIfTI header that points at another file), so the
image reader never opens a server path named by the client."""

from __future__ import annotations

import gzip
import hmac
import io
import ipaddress
import os
import re
import secrets
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import SimpleITK as sitk
from aiohttp import web

TOKEN_ENV = "MEDDDPMSYNTH_TOKEN"
TOKEN_COOKIE = "medddpm_token"
TOKEN_KEY = web.AppKey("medddpm_token", object)  # the expected token (None: open, loopback only)
BIND_HOST_KEY = web.AppKey("medddpm_bind_host", str)  # the address served on (Host check on loopback)
WS_PATHS_KEY = web.AppKey("medddpm_ws_paths", object)  # the websocket routes (plain GETs refused)
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


class NoTokenRefused(ValueError):
    """``--no-token`` asked for a bind beyond loopback."""


def resolve_token(host: str, token: str | None, environ=os.environ, no_token: bool = False) -> tuple[str | None, bool]:
    """The token to require (``--token``, else the environment, else a new one) and whether it was
    generated here (the caller prints it in the URL).

    A token is required even on loopback: every page open in the user's browser can send requests to
    127.0.0.1. ``no_token`` (``serve --no-token``) serves openly, on loopback only, for a machine with a
    single trusted user whose browser visits no untrusted pages."""
    token = token or environ.get(TOKEN_ENV) or None
    if no_token:
        if not is_loopback(host):
            raise NoTokenRefused(f"--no-token serves without an access token, which is allowed on loopback "
                                 f"only, not on {host}; drop --no-token")
        return None, False
    if token is None:
        return secrets.token_urlsafe(24), True
    return token, False


def token_ok(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a guess was right."""
    if expected is None:
        return True
    if not given:
        return False
    try:
        given_bytes = given.encode("utf-8")
    except UnicodeError:  # e.g. undecodable bytes in a header: not the token (403, not a server error)
        return False
    return hmac.compare_digest(given_bytes, expected.encode("utf-8"))


def _host_name(host_header: str) -> str:
    """``127.0.0.1:8080`` -> ``127.0.0.1``; ``[::1]:8080`` -> ``::1``."""
    try:
        return (urlsplit("//" + host_header).hostname or "").lower()
    except ValueError:
        return ""


def host_allowed(host_header: str | None, bind_host: str | None) -> bool:
    """On a loopback bind only loopback names may be in ``Host``: a DNS-rebinding page (a foreign name
    that resolves to 127.0.0.1) is refused. Beyond loopback the token guards (the name users type is
    not known here)."""
    if bind_host is not None and not is_loopback(bind_host):
        return True
    return bool(host_header) and is_loopback(_host_name(host_header))


def origin_allowed(origin: str | None, host_header: str | None) -> bool:
    """No ``Origin`` (not a browser page's script) or the page's own origin; a websocket handshake or
    request from another site's page is refused (browsers always send Origin on those)."""
    if origin is None:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(host_header) and parts.netloc.lower() == host_header.lower()


def allowed_name(filename: str) -> str:
    """The accepted suffix of an upload's name (the reader is chosen by it), else UploadRejected."""
    name = Path(filename or "").name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise UploadRejected(f"'{Path(filename or '').name}' is not a mask file; upload .nii, .nii.gz, .nrrd or .mha")


def upload_entries(files) -> list[dict]:
    """The upload's file list as sent by the page, checked: each entry a dict with a string ``name`` and
    bytes ``content`` (or a list of byte chunks, joined). Anything else (a hand-made websocket message) is
    one UploadRejected, never an AttributeError or TypeError further on."""
    malformed = UploadRejected("the upload was malformed (expected files with a name and their bytes); upload "
                               "the mask again with the page's upload button")
    if not isinstance(files, (list, tuple)):
        raise malformed
    entries = []
    for entry in files:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise malformed
        content = entry.get("content")
        if isinstance(content, list) and all(isinstance(c, (bytes, bytearray)) for c in content):
            content = b"".join(content)
        if not isinstance(content, (bytes, bytearray)):
            raise malformed
        entries.append({"name": entry["name"], "size": len(content), "content": bytes(content)})
    return entries


def check_size(size: int, limit: int) -> None:
    if size > limit:
        raise UploadRejected(f"the file is larger than the upload limit of {limit // (1024 * 1024)} MB")


#: the one image reader for each accepted suffix: a .nii.gz holding a NRRD or MetaImage header is refused
IMAGE_IOS = {".nii.gz": "NiftiImageIO", ".nii": "NiftiImageIO", ".nrrd": "NrrdImageIO", ".mha": "MetaImageIO"}
HEADER_BYTES = 64 * 1024  # MetaImage and NRRD headers are text lines before the data; far shorter than this


def check_self_contained(data: bytes, suffix: str) -> None:
    """UploadRejected unless the upload holds its own voxels: a MetaImage with ``ElementDataFile = LOCAL``,
    a NRRD without ``data file:``, a single-file NIfTI (``n+1``/``n+2``). A header naming another file would
    make the reader open a path on this server (``/etc/passwd`` read as voxels, its bytes shown as labels)."""
    detached = UploadRejected(f"the {suffix} file is not self-contained: its header points at a separate data "
                              "file; save the mask as one file (.nii.gz, or .nrrd / .mha with the data inside)")
    if suffix == ".mha":
        fields = _header_fields(data, "=")
        if fields.get("elementdatafile", "").strip().upper() != "LOCAL":
            raise detached
    elif suffix == ".nrrd":
        if not data.startswith(b"NRRD"):
            raise UploadRejected("the file could not be read as a .nrrd image (no NRRD header)")
        header = re.split(rb"\r?\n\r?\n", data[:HEADER_BYTES], maxsplit=1)[0]  # a blank line ends it
        if re.search(rb"(?im)^\s*data\s*file\s*:", header):  # any line, however odd the lines before it
            raise detached
    else:
        head = data[:1024]
        if suffix == ".nii.gz":
            try:
                head = gzip.GzipFile(fileobj=io.BytesIO(data[:HEADER_BYTES])).read(1024)
            except (OSError, EOFError):
                raise UploadRejected("the file could not be read as a .nii.gz image (not gzip data)") from None
        if not (head[344:348] == b"n+1\0" or head[4:8] == b"n+2\0"):
            raise detached if head[344:348] == b"ni1\0" or head[4:8] == b"ni2\0" else UploadRejected(
                f"the file could not be read as a {suffix} image (no NIfTI header)")


def _header_fields(data: bytes, separator: str) -> dict[str, str]:
    """``key <separator> value`` lines of a text header (keys lower-cased), up to the first line that is
    not one (the binary data) or MetaImage's last line, ``ElementDataFile``. A line that is not a field
    stops the scan, so a header hiding its ElementDataFile behind one is refused (no LOCAL found)."""
    fields = {}
    for raw in data[:HEADER_BYTES].split(b"\n"):
        line = raw.decode("latin-1").strip()
        match = re.match(r"([A-Za-z][A-Za-z0-9_]*)\s*" + re.escape(separator) + r"\s*(.*)$", line)
        if match is None:
            break
        key = match.group(1).lower()
        fields[key] = match.group(2)
        if key == "elementdatafile":
            break
    return fields


def sniff(data: bytes, filename: str, folder: str | Path | None = None) -> tuple[Path, sitk.Image]:
    """Write the upload into a fresh private temp folder and read it with SimpleITK: a 3-D scalar
    image or UploadRejected. Returns the saved path (the caller owns its folder) and the image."""
    suffix = allowed_name(filename)
    check_self_contained(data, suffix)  # before any reader sees the file
    workdir = Path(tempfile.mkdtemp(prefix="medddpm_upload_", dir=folder))
    path = workdir / f"upload{suffix}"  # never the client's name: no path tricks
    path.write_bytes(data)
    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO(IMAGE_IOS[suffix])
        reader.SetFileName(str(path))
        image = reader.Execute()
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
    """Every request (page, scripts, websocket, download) must come from the page's own origin, name
    this machine on a loopback bind, and carry the token when one is set."""
    host = request.headers.get("Host")
    if not host_allowed(host, request.app.get(BIND_HOST_KEY)):
        return web.Response(status=403, text="403: this server answers only to localhost / 127.0.0.1 (the Host "
                                             "header names another machine); open the URL printed by "
                                             "'medddpm-synth serve'")
    if not origin_allowed(request.headers.get("Origin"), host):
        return web.Response(status=403, text="403: cross-origin request refused; open the URL printed by "
                                             "'medddpm-synth serve' in the browser")
    expected = request.app[TOKEN_KEY]
    if not token_ok(_given_token(request), expected):
        return web.Response(status=403, text="403: wrong or missing access token (open the URL printed by "
                                             "'medddpm-synth serve', which carries ?token=...)")
    if request.path in request.app.get(WS_PATHS_KEY, ()) and request.headers.get("Upgrade", "").lower() != "websocket":
        return web.Response(status=400, text="400: this address is the page's websocket, not a page; open the URL "
                                             "printed by 'medddpm-synth serve'")
    response = await handler(request)
    if expected and request.query.get("token") and not response.prepared:
        # first visit with ?token=: keep it for the page's own requests (scripts, websocket, download)
        response.set_cookie(TOKEN_COOKIE, expected, httponly=True, samesite="Strict")
    return response


# ------------------------------------------------------------------------------- transport bounds

#: room for the message around an upload's bytes (msgpack framing, file name, the other state)
MESSAGE_OVERHEAD = 1024 * 1024


def bound_websocket_messages(wslink_server, upload_limit: int) -> None:
    """Cap what one websocket client can make the server buffer at ``upload_limit`` + overhead.

    wslink reassembles a message from 4 MB websocket frames and, once a client said hello, allocates
    whatever total (up to 4 GB) the first frame's header announces, for any number of interleaved
    messages. Every client of ``wslink_server`` (its aiohttp backend) gets an un-chunker that refuses a
    message, or a set of pending ones, above the cap before allocating; wslink then drops that client."""
    from wslink.chunking import HEADER_LENGTH, UnChunker, _decode_header

    cap = int(upload_limit) + MESSAGE_OVERHEAD

    class BoundedUnChunker(UnChunker):
        def set_max_message_size(self, size):  # wslink raises it to 4 GB after the hello
            super().set_max_message_size(min(int(size), cap))

        def process_chunk(self, chunk: bytes):
            message_id, _, total = _decode_header(chunk[:HEADER_LENGTH])
            if message_id not in self.pending_messages:
                pending = sum(len(m["content"]) for m in self.pending_messages.values())
                if pending + total > cap:
                    self.release_pending_messages()
                    raise ValueError(f"a websocket message of {total} bytes (with {pending} pending) is above the "
                                     f"limit of {cap} bytes (--max-upload-mb)")
            return super().process_chunk(chunk)

    for handler in wslink_server._ws_handlers:  # one per websocket route
        connect = handler.onConnect

        async def on_connect(request, client_id, handler=handler, connect=connect):
            await connect(request, client_id)
            handler.unchunkers[client_id] = BoundedUnChunker()

        handler.onConnect = on_connect


def websocket_paths(wslink_server) -> set[str]:
    """The routes of ``wslink_server``'s websocket handlers (a plain GET there is refused, not a 500)."""
    handlers = {h.handleWsRequest for h in wslink_server._ws_handlers}
    return {route.resource.canonical for route in wslink_server.app.router.routes()
            if route.handler in handlers and route.resource is not None}
