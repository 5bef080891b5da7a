"""The HTTP side of ``medddpm-synth serve``: routes, token middleware, per-browser sessions.

Handlers parse the request and call :class:`.session.WebSession` (i.e. the Slicer module's SceneLogic);
the MRML scenes are touched only from the event-loop thread, and the engine runs in its own process.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
from pathlib import Path

from aiohttp import web

from MedDDPMSynthLib.errors import MedDDPMError
from MedDDPMSynthSlicerLib import GenerationSettings

from . import security
from .session import WebSession

STATIC = Path(__file__).with_name("static")
TOKEN_COOKIE, SESSION_COOKIE = "medddpm_token", "medddpm_session"
SAMPLERS = ("ddim", "dpm++", "ddpm")
MAX_SESSIONS = 16


def _given_token(request: web.Request) -> str | None:
    return (request.query.get("token") or request.headers.get("X-MedDDPM-Token")
            or request.cookies.get(TOKEN_COOKIE))


@web.middleware
async def token_middleware(request: web.Request, handler):
    """Every request (page, API, picture, download) must carry the token when one is set."""
    expected = request.app["token"]
    if not security.token_ok(_given_token(request), expected):
        return web.Response(status=403, text="403: wrong or missing access token (open the URL printed by "
                                             "'medddpm-synth serve', which carries ?token=...)")
    response = await handler(request)
    if expected and request.query.get("token"):  # first visit with ?token=: keep it for the page's own calls
        response.set_cookie(TOKEN_COOKIE, expected, httponly=True, samesite="Strict")
    return response


def _session(request: web.Request) -> WebSession:
    sessions = request.app["sessions"]
    key = request.cookies.get(SESSION_COOKIE)
    if key not in sessions:
        raise web.HTTPBadRequest(text="no session; reload the page")
    return sessions[key]


def _error(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def index(request: web.Request) -> web.StreamResponse:
    sessions = request.app["sessions"]
    key = request.cookies.get(SESSION_COOKIE)
    response = web.FileResponse(STATIC / "index.html")
    if key not in sessions:
        idle = [k for k, s in sessions.items() if not s.busy]
        if len(sessions) >= MAX_SESSIONS and idle:  # each session holds a scene: drop the oldest idle one
            sessions.pop(idle[0]).close()
        key = secrets.token_urlsafe(16)
        sessions[key] = WebSession(request.app["work_dir"])
        response.set_cookie(SESSION_COOKIE, key, httponly=True, samesite="Strict")
    return response


async def config(request: web.Request) -> web.Response:
    session = _session(request)
    names = [m["name"] for m in session.logic.available_models()]
    return web.json_response({"models": names, "default_model": request.app["model"], "samplers": SAMPLERS,
                              "upload_limit_mb": request.app["upload_limit"] // (1024 * 1024)})


async def status(request: web.Request) -> web.Response:
    session = _session(request)
    session.tick()
    return web.json_response(session.status())


async def upload(request: web.Request) -> web.Response:
    session = _session(request)
    limit = request.app["upload_limit"]
    reader = await request.multipart()
    part = await reader.next()
    if part is None or part.name != "file":
        return _error("no file in the upload")
    name = part.filename or ""
    try:
        security.allowed_name(name)  # before reading: a wrong type is refused without storing anything
        data = bytearray()
        while chunk := await part.read_chunk(1 << 20):
            data.extend(chunk)
            security.check_size(len(data), limit)
        path, image = security.sniff(bytes(data), name, request.app["work_dir"])
    except security.UploadRejected as error:
        return _error(str(error))
    try:
        session.load_mask(image, Path(name).name.split(".")[0] or "mask")
    except MedDDPMError as error:
        return _error(str(error))
    finally:
        path.unlink(missing_ok=True)
        path.parent.rmdir()
    return web.json_response(session.status())


def _settings(body: dict, default_model: str) -> GenerationSettings:
    sampler = str(body.get("sampler") or "ddim")
    if sampler not in SAMPLERS:
        raise MedDDPMError(f"unknown sampler '{sampler}'")
    steps = int(body.get("steps") or 0) or None
    return GenerationSettings(model=str(body.get("model") or default_model), sampler=sampler, steps=steps,
                              samples=max(1, min(int(body.get("samples") or 1), 8)), seed=int(body.get("seed") or 0),
                              spacing="uniform" if sampler == "ddim" else "quadratic")


async def generate(request: web.Request) -> web.Response:
    session = _session(request)
    try:
        body = await request.json()
        kind = "regenerate" if request.match_info["kind"] == "regenerate" else "generate"
        session.request(kind, _settings(body, request.app["model"]))
    except (MedDDPMError, ValueError, TypeError) as error:
        return _error(str(error))
    return web.json_response(session.status())


async def cancel(request: web.Request) -> web.Response:
    session = _session(request)
    session.cancel()
    return web.json_response(session.status())


async def edit(request: web.Request) -> web.Response:
    session = _session(request)
    try:
        body = await request.json()
        operation = str(body.get("op"))
        if operation == "paint":  # value: the clicked pixel of the picture
            px, py = (float(v) for v in body["value"][:2])
            session.paint(px, py, min(max(float(body.get("radius", 5)), 0.5), 50.0))
        else:
            value = [float(v) for v in body.get("value", [])] if operation == "shift" else float(body.get("value", 1))
            session.edit(operation, value)
    except (MedDDPMError, ValueError, TypeError, KeyError) as error:
        return _error(str(error))
    return web.json_response(session.status())


async def picture(request: web.Request) -> web.Response:
    session = _session(request)
    return web.Response(body=session.picture(), content_type="image/png", headers={"Cache-Control": "no-store"})


async def download(request: web.Request) -> web.Response:
    session = _session(request)
    try:
        data = session.export_zip()
    except MedDDPMError as error:
        return _error(str(error))
    return web.Response(body=data, content_type="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="medddpm_synth_pair.zip"'})


async def _ticker(app: web.Application):
    """Advance every session's queue even when no page is polling (a closed tab still finishes)."""
    async def loop():
        while True:
            for session in list(app["sessions"].values()):
                session.tick()
            await asyncio.sleep(0.25)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    for session in app["sessions"].values():
        session.close()


def make_app(token: str | None, model: str = "demo", upload_limit: int = security.DEFAULT_UPLOAD_LIMIT,
             work_dir: str | Path | None = None) -> web.Application:
    app = web.Application(middlewares=[token_middleware], client_max_size=upload_limit + (1 << 20))
    app["token"], app["model"], app["upload_limit"] = token, model, upload_limit
    app["work_dir"] = Path(work_dir or tempfile.mkdtemp(prefix="medddpm_web_"))
    app["sessions"] = {}
    app.cleanup_ctx.append(_ticker)
    app.router.add_get("/", index)
    app.router.add_static("/static", STATIC)
    app.router.add_get("/api/config", config)
    app.router.add_get("/api/status", status)
    app.router.add_post("/api/upload", upload)
    app.router.add_post("/api/{kind:generate|regenerate}", generate)
    app.router.add_post("/api/cancel", cancel)
    app.router.add_post("/api/edit", edit)
    app.router.add_get("/api/view.png", picture)
    app.router.add_get("/api/download", download)
    return app


def serve(host: str, port: int, token: str | None, model: str, upload_limit: int) -> None:
    app = make_app(token, model, upload_limit)
    query = f"?token={token}" if token else ""
    print(f"MedDDPMSynth web front on http://{host}:{port}/{query}", flush=True)
    web.run_app(app, host=host, port=port, print=None)
