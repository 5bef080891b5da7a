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
    for host in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):  # a token by default, also on loopback
        token, generated = security.resolve_token(host, None, {})
        assert generated and len(token) >= 24, host
    assert security.resolve_token("127.0.0.1", None, {}) != security.resolve_token("127.0.0.1", None, {})
    assert security.resolve_token("127.0.0.1", None, {security.TOKEN_ENV: "env"}) == ("env", False)
    assert security.resolve_token("0.0.0.0", "given", {security.TOKEN_ENV: "env"}) == ("given", False)
    assert security.resolve_token("127.0.0.1", None, {}, no_token=True) == (None, False)  # the explicit opt-out
    with pytest.raises(security.NoTokenRefused, match="loopback only"):
        security.resolve_token("0.0.0.0", None, {}, no_token=True)  # never open on the network
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
            "from MedDDPMSynthLib.cli.commands import main; sys.exit(main(['serve']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert 'pip install "medddpm-synth[web]"' in result.stderr


# ------------------------------------------------------------------ origin, host, odd requests (issue 20)


def _wslink_server(upload_limit: int | None = None, token: str | None = "right-token", bind_host: str = "127.0.0.1"):
    """A real wslink aiohttp web server (the one trame serves the page with), guarded as the app guards it."""
    from wslink.backends.aiohttp import create_webserver
    from wslink.websocket import ServerProtocol

    protocol = ServerProtocol()
    protocol.secret = "wslink-secret"
    server = create_webserver({"ws": {"ws": protocol}})
    server.app[security.TOKEN_KEY] = token
    server.app[security.BIND_HOST_KEY] = bind_host
    server.app[security.WS_PATHS_KEY] = security.websocket_paths(server)
    server.app.middlewares.append(security.token_middleware)
    if upload_limit is not None:
        security.bound_websocket_messages(server, upload_limit)
    return server


def _run(scenario, server):
    from aiohttp.test_utils import TestClient, TestServer

    async def main():
        client = TestClient(TestServer(server.app))
        await client.start_server()
        try:
            await scenario(client)
        finally:
            await client.close()

    asyncio.run(main())


def test_cross_origin_and_rebinding_requests_are_refused():
    """A page of another site opening the websocket, a DNS-rebinding page (foreign Host on a loopback
    bind), a non-ASCII token header, a plain GET on the websocket route: 4xx answers, never 500."""
    import aiohttp

    async def scenario(client):
        port = client.port
        own = f"127.0.0.1:{port}"
        assert security.websocket_paths(server) == {"/ws"}
        # the page's own websocket handshake: accepted
        async with client.ws_connect("/ws?token=right-token", headers={"Origin": f"http://{own}"}) as ws:
            assert not ws.closed
        for origin in ("http://evil.example", f"http://localhost:{port + 1}", "null"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await client.ws_connect("/ws?token=right-token", headers={"Origin": origin})
            assert refused.value.status == 403, origin
        response = await client.get("/?token=right-token", headers={"Origin": "http://evil.example"})
        assert response.status == 403 and "cross-origin" in await response.text()
        # DNS rebinding: evil.example resolves to 127.0.0.1, so the browser sends Host: evil.example:PORT
        for host in (f"evil.example:{port}", "", "localhost.evil.example"):
            response = await client.get("/?token=right-token", headers={"Host": host})
            assert response.status == 403 and "localhost" in await response.text(), host
        for host in (own, f"localhost:{port}", f"[::1]:{port}"):
            response = await client.get("/nothing?token=right-token", headers={"Host": host})
            assert response.status == 404, host  # past the guard, to the router
        response = await client.get("/nothing", headers={"X-MedDDPM-Token": "tökén"})
        assert response.status == 403
        response = await client.get("/nothing", headers=[("X-MedDDPM-Token", b"\xff\xfe".decode("latin-1"))])
        assert response.status == 403
        response = await client.get("/ws?token=right-token")  # a plain GET, no websocket upgrade
        assert response.status == 400 and "websocket" in await response.text()

    server = _wslink_server()
    _run(scenario, server)


def test_beyond_loopback_the_host_is_not_checked_but_the_token_is():
    async def scenario(client):
        response = await client.get("/nothing?token=right-token", headers={"Host": "gpu-box.lan:8080"})
        assert response.status == 404
        response = await client.get("/nothing", headers={"Host": "gpu-box.lan:8080"})
        assert response.status == 403

    _run(scenario, _wslink_server(bind_host="0.0.0.0"))


def _hello_then_announce(total: int):
    """After wslink's hello, a first chunk announcing a message of ``total`` bytes: True if the server
    dropped the connection, False if it kept it open (waiting to receive, having allocated ``total``)."""
    import aiohttp
    import msgpack
    from wslink.chunking import _encode_header, generate_chunks

    async def scenario(client):
        async with client.ws_connect("/ws?token=right-token") as ws:
            hello = msgpack.packb({"wslink": "1.0", "id": "system:c0:0", "method": "wslink.hello",
                                   "args": [{"secret": "wslink-secret"}], "kwargs": {}})
            for chunk in generate_chunks(hello, 4 * 1024 * 1024):
                await ws.send_bytes(chunk)
            reply = await ws.receive(timeout=10)
            assert reply.type == aiohttp.WSMsgType.BINARY  # authenticated: wslink now allows up to 4 GB
            await ws.send_bytes(_encode_header(7, 0, total) + b"\x00" * 1024)
            try:
                message = await ws.receive(timeout=3)
            except asyncio.TimeoutError:
                result.append(False)
                return
            result.append(message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                           aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR))

    result: list[bool] = []
    return scenario, result


def test_websocket_messages_are_bounded_at_the_transport():
    """A client announcing a 600 MB message with a 2 MB upload limit is dropped at the first chunk; wslink
    alone would reserve the 600 MB and wait for it (the control run shows that)."""
    limit = 2 * 1024 * 1024
    scenario, dropped = _hello_then_announce(600 * 1024 * 1024)
    _run(scenario, _wslink_server(upload_limit=limit))
    assert dropped == [True]

    scenario, dropped = _hello_then_announce(600 * 1024 * 1024)
    _run(scenario, _wslink_server(upload_limit=None))  # control: without the bound wslink accepts it
    assert dropped == [False]

    scenario, dropped = _hello_then_announce(limit)  # within the limit: kept open, waiting for the rest
    _run(scenario, _wslink_server(upload_limit=limit))
    assert dropped == [False]


# --------------------------------------------------------------------- self-contained uploads (issue 20)


def _secret_file(tmp_path):
    secret = tmp_path / "server_secret.raw"
    secret.write_bytes(bytes(range(1, 65)) * 8)  # 512 bytes a client must never see as labels
    return secret


def test_detached_headers_are_refused_before_any_reader_opens_them(tmp_path):
    secret = _secret_file(tmp_path)
    (tmp_path / "up").mkdir()
    mha = (f"ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_UCHAR\n"
           f"ElementDataFile = {secret}\n").encode()
    nrrd = (f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 8 8 8\nencoding: raw\ndata file: {secret}\n\n").encode()
    nrrd_hidden = (f"NRRD0004\ntype: uint8\ndimension: 3\n#x\nsizes: 8 8 8\nencoding: raw\nDataFile: {secret}\n\n"
                   ).encode()
    mha_hidden = b"ObjectType = Image\nNDims = 3\n-- not a field --\nElementDataFile = LOCAL\n"
    for data, name in ((mha, "m.mha"), (nrrd, "m.nrrd"), (nrrd_hidden, "m.nrrd"), (mha_hidden, "m.mha"),
                       (mha.replace(b"ElementDataFile", b"elementdatafile"), "m.mha")):
        with pytest.raises(security.UploadRejected, match="not self-contained") as refused:
            security.sniff(data, name, tmp_path / "up")
        assert str(secret) not in str(refused.value) and "server_secret" not in str(refused.value)
    # a NIfTI-1 pair header (.hdr/.img, magic ni1) sent as .nii
    header = bytearray(348)
    header[0:4] = (348).to_bytes(4, "little")
    header[344:348] = b"ni1\0"
    with pytest.raises(security.UploadRejected, match="not self-contained"):
        security.sniff(bytes(header), "m.nii", tmp_path / "up")
    assert not list((tmp_path / "up").iterdir())  # nothing was even written


def test_self_contained_files_of_every_format_are_read(tmp_path):
    (tmp_path / "up").mkdir()
    labels = np.zeros((6, 7, 8), np.uint8)
    labels[2:4, 2:5, 2:6] = 2
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        path = tmp_path / f"mask{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(labels), str(path), useCompression=suffix != ".nii")
        saved, image = security.sniff(path.read_bytes(), path.name, tmp_path / "up")
        assert np.array_equal(sitk.GetArrayFromImage(image), labels), suffix
        saved.unlink()
        saved.parent.rmdir()
    # a NRRD file named .nii.gz is not read by the NRRD reader behind the NIfTI name
    nrrd = tmp_path / "mask.nrrd"
    with pytest.raises(security.UploadRejected):
        security.sniff(nrrd.read_bytes(), "mask.nii.gz", tmp_path / "up")


def test_malformed_upload_entries_are_one_clear_refusal():
    for files in (None, "x", 5, [5], ["a.nii.gz"], [{"name": 3, "content": b""}], [{"name": "a.nii.gz"}],
                  [{"name": "a.nii.gz", "content": "text"}], [{"name": "a.nii.gz", "content": [b"a", 3]}]):
        with pytest.raises(security.UploadRejected, match="malformed"):
            security.upload_entries(files)
    (entry,) = security.upload_entries([{"name": "a.nii.gz", "content": [b"ab", b"c"], "size": 99}])
    assert entry == {"name": "a.nii.gz", "size": 3, "content": b"abc"}  # the size is what arrived
