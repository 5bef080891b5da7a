"""The browser front in real Chromium (Debian's ``chromium``, driven by Playwright): a real
``medddpm-synth serve`` on 127.0.0.1 with a token and the tiny demo model; upload the example mask,
Generate, watch the progress bar finish, check the result picture is not blank (screenshot kept as a test
artefact), download the image+mask zip and reload it, refuse a bad upload and a wrong token."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
MASK = REPO / "Resources" / "Examples" / "demo_mask.nii.gz"
TOKEN = "test-token-0123456789"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _need(condition: bool, reason: str) -> None:
    """Skip only on a developer machine without a browser; CI installs chromium and must run these."""
    if not condition:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI must run the browser tests; .ci/run installs chromium)")
        pytest.skip(reason)


_need(CHROMIUM is not None, "Debian's chromium is not installed (apt-get install chromium)")
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None
_need(sync_playwright is not None, "playwright is not installed (pip install -e .[test])")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("web_home")
    port = _free_port()
    env = {**os.environ, "MEDDDPMSYNTH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("MEDDDPMSYNTH_TOKEN", None)
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "MedDDPMSynthLib", "serve", "--port", str(port),
                             "--token", TOKEN, "--model", "demo"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/?token={TOKEN}", timeout=2).read()
            break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the server did not start:\n" + (home / "server.log").read_text())
            time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def test_generate_download_reload(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 720}, accept_downloads=True)
    assert page.goto(f"{server}/?token={TOKEN}").status == 200
    page.wait_for_function("document.getElementById('model').options.length > 0")

    # a bad file: a clear message, nothing else changes
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_function("document.getElementById('error').textContent.includes('not a mask file')")
    assert page.text_content("#mask") == "no mask loaded"

    page.set_input_files("#file", str(MASK))
    page.wait_for_function("document.getElementById('mask').textContent === 'mask: demo_mask'")
    assert page.text_content("#error") == ""

    page.select_option("#sampler", "ddim")
    page.fill("#steps", "2")
    page.click("#generate")
    page.wait_for_function("document.getElementById('state').textContent === 'done'", timeout=90_000)
    assert page.eval_on_selector("#progress", "p => p.value") == 1
    page.wait_for_function("(() => { const v = document.getElementById('view');"
                           " return v.dataset.result === '1' && v.complete && v.naturalWidth > 0; })()")
    assert "finished" in page.text_content("#message")

    # the screenshot is the test's artefact; its result views must hold a real picture
    shot = tmp_path / "web_app.png"
    page.screenshot(path=str(shot))
    page.locator("#view").screenshot(path=str(tmp_path / "web_view.png"))
    view = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "web_view.png")))
    assert view.std() > 20 and (view.reshape(-1, view.shape[-1])[:, :3].max(1) > 50).mean() > 0.05
    if os.environ.get("MEDDDPMSYNTH_SAVE_SCREENSHOT"):  # refresh the README's picture on request
        shutil.copy(shot, REPO / "docs" / "images" / "web_app.png")

    with page.expect_download() as info:
        page.click("#download")
    archive = tmp_path / "pair.zip"
    info.value.save_as(archive)
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "pair")
    assert {"MedDDPMSynth/imagesTr/synth_001_0000.nii.gz", "MedDDPMSynth/labelsTr/synth_001.nii.gz",
            "MedDDPMSynth/provenance/synth_001.json", "MedDDPMSynth/dataset.json"} <= names
    mask = sitk.ReadImage(str(MASK))
    label = sitk.ReadImage(str(tmp_path / "pair/MedDDPMSynth/labelsTr/synth_001.nii.gz"))
    image = sitk.ReadImage(str(tmp_path / "pair/MedDDPMSynth/imagesTr/synth_001_0000.nii.gz"))
    assert _same_geometry(label, mask) and _same_geometry(image, mask)
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(mask))
    assert sitk.GetArrayFromImage(image).std() > 0

    # paint: a brush stroke on the axial slice (SceneLogic.add_tumor), then undo it
    page.check("#paintmode")
    page.click("#view", position={"x": 100, "y": 128})
    page.wait_for_function("document.getElementById('message').textContent === 'paint done'")
    page.uncheck("#paintmode")
    page.click("#undo")
    page.wait_for_function("document.getElementById('message').textContent === 'undo done'")

    # move the tumour 10 mm to the right and re-draw only its neighbourhood (SceneLogic's local re-generation)
    page.click("[data-shift='1,0,0']")
    page.wait_for_function("document.getElementById('message').textContent === 'shift done'")
    page.click("#regenerate")
    page.wait_for_function("document.getElementById('message').textContent.startsWith('regenerate finished')",
                           timeout=90_000)
    assert page.text_content("#error") == ""

    # reload the downloaded mask into the page
    renamed = tmp_path / "reloaded.nii.gz"
    shutil.copy(tmp_path / "pair/MedDDPMSynth/labelsTr/synth_001.nii.gz", renamed)
    page.set_input_files("#file", str(renamed))
    page.wait_for_function("document.getElementById('mask').textContent === 'mask: reloaded'")
    page.close()


def test_wrong_token_is_refused(server, browser):
    page = browser.new_page()
    assert page.goto(f"{server}/?token=wrong").status == 403
    assert "access token" in page.text_content("body")
    assert page.goto(f"{server}/").status == 403
    assert page.goto(f"{server}/api/status").status == 403
    page.close()


def test_queue_and_cancel(server, browser):
    """One generation at a time per session: a second Generate waits in the queue (shown in the page);
    Cancel stops the running one, drops the queue and adds nothing."""
    page = browser.new_page()
    page.goto(f"{server}/?token={TOKEN}")
    page.wait_for_function("document.getElementById('model').options.length > 0")
    page.set_input_files("#file", str(MASK))
    page.wait_for_function("document.getElementById('mask').textContent === 'mask: demo_mask'")
    page.select_option("#sampler", "ddim")
    page.fill("#steps", "2")
    page.click("#generate")
    page.click("#generate")  # the engine process needs seconds to start: the first is surely still running
    page.wait_for_function("document.getElementById('state').textContent.includes('(1 queued)')")
    page.click("#cancel")
    page.wait_for_function("document.getElementById('state').textContent === 'idle'")
    assert "cancelled" in page.text_content("#message")
    time.sleep(1.0)  # nothing queued starts afterwards
    assert page.text_content("#state") == "idle"
    page.close()
