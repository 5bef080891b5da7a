"""The browser front's safety checks without a browser: token comparison and resolution, upload checks,
and the token middleware answering 403 on every route (aiohttp test server, in-process)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("aiohttp", reason="the web extra is not installed")
import slicer_scene_helpers  # noqa: F401,E402  (puts the Slicer-side packages on sys.path for source checkouts)
from MedDDPMSynthWeb import security  # noqa: E402


def test_token_compare():
    assert security.token_ok("s3cret", "s3cret")
    assert not security.token_ok("s3cres", "s3cret")
    assert not security.token_ok("", "s3cret") and not security.token_ok(None, "s3cret")
    assert security.token_ok(None, None)  # no token configured (loopback): open


def test_token_resolution():
    assert security.resolve_token("127.0.0.1", None, {}) == (None, False)
    assert security.resolve_token("localhost", None, {}) == (None, False)
    assert security.resolve_token("::1", None, {}) == (None, False)
    assert security.resolve_token("127.0.0.1", None, {security.TOKEN_ENV: "env"}) == ("env", False)
    assert security.resolve_token("0.0.0.0", "given", {security.TOKEN_ENV: "env"}) == ("given", False)
    token, generated = security.resolve_token("0.0.0.0", None, {})
    assert generated and len(token) >= 24  # never open on the network
    assert not security.is_loopback("192.168.1.5") and not security.is_loopback("example.org")


def test_upload_checks(tmp_path):
    for name in ("m.nii", "m.nii.gz", "M.NRRD", "m.mha"):
        security.allowed_name(name)
    for name in ("m.txt", "m.png", ".nii", "m.nii.gz.exe", ""):
        with pytest.raises(security.UploadRejected):
            security.allowed_name(name)
    with pytest.raises(security.UploadRejected, match="upload limit"):
        security.check_size(3 * 1024 * 1024, 2 * 1024 * 1024)

    (tmp_path / "up").mkdir()
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8)), str(good))
    path, image = security.sniff(good.read_bytes(), "../../etc/x.nii.gz", tmp_path / "up")
    assert image.GetSize() == (6, 5, 4) and path.parent.parent == tmp_path / "up" and path.name == "upload.nii.gz"
    with pytest.raises(security.UploadRejected, match="could not be read"):
        security.sniff(b"not an image at all", "fake.nii.gz", tmp_path / "up")
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((5, 6), np.uint8)), str(flat))
    with pytest.raises(security.UploadRejected, match="3-D"):
        security.sniff(flat.read_bytes(), "flat.nii.gz", tmp_path / "up")
    assert [p.name for p in (tmp_path / "up").iterdir()] == [path.parent.name]  # rejected uploads left nothing


def test_token_middleware_guards_every_route():
    """The middleware the served app installs (trame's aiohttp server), on a real aiohttp test server."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def hello(_request):
        return web.Response(text="page")

    app = web.Application(middlewares=[security.token_middleware])
    app[security.TOKEN_KEY] = "right-token"
    app.router.add_get("/", hello)
    app.router.add_get("/download", hello)

    async def scenario():
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            for url in ("/", "/download", "/nothing-here"):
                for query in ("", "?token=wrong-token", "?token="):
                    response = await client.get(url + query)
                    assert response.status == 403, (url, query)
                    assert "access token" in await response.text()
            response = await client.get("/?token=right-token")
            assert response.status == 200 and response.cookies[security.TOKEN_COOKIE].value == "right-token"
            response = await client.get("/download")  # the cookie from the first visit now carries the token
            assert response.status == 200
            response = await client.get("/download", headers={"X-MedDDPM-Token": "right-token"}, cookies={})
            assert response.status == 200
        finally:
            await client.close()

    asyncio.run(scenario())


def test_serve_without_the_web_extra_says_how_to_install():
    import subprocess
    import sys

    code = ("import sys; sys.modules['trame_slicer'] = None\n"  # as if the web extra were not installed
            "from MedDDPMSynthLib.cli import main; sys.exit(main(['serve']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert 'pip install "medddpm-synth[web]"' in result.stderr
