"""The browser front in real Chromium (Debian's ``chromium``, driven by Playwright): a real
``medddpm-synth serve`` (trame-slicer) on 127.0.0.1 with the tiny demo model, opened at the URL it prints
(which carries the access token it generated, as Jupyter does); upload the
example mask, Generate, watch the progress bar finish, check the result shows in the slice view
(screenshot kept as a test artefact), download the image+mask zip and reload it, shift the tumour and
re-generate locally, queue and cancel, refuse a bad upload and a wrong token."""

from __future__ import annotations

import ctypes.util
import glob
import json
import os
import re
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

pytestmark = pytest.mark.usefixtures("tiny_demo")  # "demo" = the tiny model (conftest)

REPO = Path(__file__).resolve().parents[3]
MASK = REPO / "MedDDPMSynth" / "Resources" / "Examples" / "demo_mask.nii.gz"
# the public BraTS2021_00529 segmentation as Med-DDPM's samples ship it (preprocessed labels 1-4, 4 = brain)
BRATS_SEG = REPO / "Testing" / "Data" / "med-ddpm-samples" / "brats2021" / "seg" / "BraTS2021_00529_seg.nii.gz"
TOKEN = ""  # the token the server generated, read from the URL it prints (set by the server fixture)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None
try:
    import trame_slicer  # noqa: F401
except ImportError:
    trame_slicer = None


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None. Testing/system_deps.sh (part of README.md's test command)
    installs the system packages where it can (root + apt-get)."""
    if CHROMIUM is None:
        return "Debian's chromium is not installed (apt-get install chromium, or run Testing/system_deps.sh as root)"
    if ctypes.util.find_library("EGL") is None or not glob.glob("/usr/lib/*/dri/swrast_dri.so"):
        return "Mesa's EGL or software driver is not installed (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri)"
    if sync_playwright is None:
        return "playwright is not installed (pip install -e .[test])"
    if trame_slicer is None:
        return "trame-slicer is not installed (pip install -e .[test])"
    return None


MISSING = _missing()
# a developer machine without a browser skips these with the reason; CI must run them, so there each one fails
# with it instead (the rest of the suite still runs)
pytestmark = [pytestmark, pytest.mark.skipif(MISSING is not None and os.environ.get("CI") != "true", reason=str(MISSING))]


@pytest.fixture(scope="module", autouse=True)  # autouse: set up before the server and browser fixtures
def _ci_needs_a_browser():
    if MISSING is not None:
        pytest.fail(f"{MISSING} (CI must run the browser tests; .ci/run installs chromium)", pytrace=False)


UPLOAD = ".synth-upload input[type=file]"
# every wait below is for an event (a page element, a message, a changed picture); this only bounds a hang, and is
# generous because the server, the engine process and chromium share the machine with whatever else runs on it
WAIT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(home: Path, model: str, bundled_demo: bool = False):
    """A real ``medddpm-synth serve --model MODEL`` on a free port with its own model home: yields (url, token).
    ``bundled_demo``: "demo" is the bundled demo model, as users get it (not this module's tiny one)."""
    port = _free_port()
    env = {**os.environ, "MEDDDPMSYNTH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("MEDDDPMSYNTH_TOKEN", None)
    if bundled_demo:
        env.pop("MEDDDPMSYNTH_DEMO_MODEL", None)
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "MedDDPMSynthLib", "serve", "--port", str(port),
                             "--model", model], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + WAIT_S  # importing VTK and MRML takes a while on 2 (busy) cores
    while True:
        printed = re.search(rf"{re.escape(url)}/\?token=(\S+)", (home / "server.log").read_text())
        try:
            if printed:  # no --token: the server generated one and printed the URL with it
                token = printed.group(1)
                urllib.request.urlopen(f"{url}/?token={token}", timeout=2).read()
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not answer within {WAIT_S} s:\n" + (home / "server.log").read_text())
        time.sleep(0.3)
    try:
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    global TOKEN
    for url, token in _serve(tmp_path_factory.mktemp("web_home"), "demo"):
        TOKEN = token
        yield url


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


def _open(browser, url: str, token: str | None = None):
    """The page at ``url`` with ``token`` (default: the module server's), once its panel is there."""
    page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page.set_default_timeout(WAIT_S * 1000)
    assert page.goto(f"{url}/?token={TOKEN if token is None else token}").status == 200
    page.wait_for_selector(".synth-generate")
    return page


def _upload(page, path: Path, name: str) -> None:
    page.set_input_files(UPLOAD, str(path))
    page.wait_for_selector(f".synth-mask:has-text('Mask: {name} (')")
    page.wait_for_selector(f".synth-message:has-text('loaded {name}')")


def _message(page, text: str) -> None:
    page.wait_for_selector(f".synth-message:has-text('{text}')")


def _wait_for_new_picture(page, before: np.ndarray, path: Path) -> np.ndarray:
    """The slice view once it shows something else than ``before``. The remote view streams its next frame
    when the server gets to it: wait for that event (a changed picture), not a time."""
    deadline = time.monotonic() + WAIT_S
    view = _view_pixels(page, path)
    while np.abs(view - before).mean() <= 5 and time.monotonic() < deadline:
        page.wait_for_timeout(250)
        view = _view_pixels(page, path)
    return view


def _view_pixels(page, path: Path) -> np.ndarray:
    """The axial slice view (the layout's first view) as the browser shows it."""
    page.locator(".display-area").first.screenshot(path=str(path))
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[..., :3].astype(np.float32)



def _download_pair(page, tmp_path: Path) -> set[str]:
    """Click Download, unpack the archive into ``tmp_path / "pair"`` and return its member names."""
    with page.expect_download() as info:
        page.click(".synth-download")
    archive = tmp_path / "pair.zip"
    info.value.save_as(archive)
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "pair")
        return set(z.namelist())

def test_generate_download_reload(server, browser, tmp_path):
    page = _open(browser, server)

    # a bad file: one clear message, nothing loaded
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.set_input_files(UPLOAD, str(bad))
    page.wait_for_selector(".synth-error:has-text('not a mask file')")
    assert page.inner_text(".synth-mask") == "No mask loaded"

    _upload(page, MASK, "demo_mask")
    mask_view = _view_pixels(page, tmp_path / "mask_view.png")
    page.fill(".synth-steps input", "2")
    page.click(".synth-generate")
    page.wait_for_selector(".synth-status:has-text('generate')")  # the live progress line
    _message(page, "generate finished")
    assert page.get_attribute(".synth-progress", "aria-valuenow") == "100"
    assert page.locator(".synth-error").count() == 0

    # the result is the slice view's background now: the picture changed and is not blank
    view = _wait_for_new_picture(page, mask_view, tmp_path / "result_view.png")
    page.screenshot(path=str(tmp_path / "web_app.png"))
    assert view.std() > 20 and (view.max(-1) > 50).mean() > 0.05
    assert np.abs(view - mask_view).mean() > 5  # not the mask's picture any more

    names = _download_pair(page, tmp_path)
    assert {"MedDDPMSynth/imagesTr/synth_001_0000.nii.gz", "MedDDPMSynth/labelsTr/synth_001.nii.gz",
            "MedDDPMSynth/provenance/synth_001.json", "MedDDPMSynth/dataset.json"} <= names
    mask = sitk.ReadImage(str(MASK))
    label = sitk.ReadImage(str(tmp_path / "pair/MedDDPMSynth/labelsTr/synth_001.nii.gz"))
    image = sitk.ReadImage(str(tmp_path / "pair/MedDDPMSynth/imagesTr/synth_001_0000.nii.gz"))
    assert _same_geometry(label, mask) and _same_geometry(image, mask)
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(mask))
    assert sitk.GetArrayFromImage(image).std() > 0

    # move the tumour 10 mm to the right and re-draw only its neighbourhood (SceneLogic's local re-generation)
    page.fill(".synth-shift-0 input", "10")
    page.click(".synth-shift")
    _message(page, "shift done")
    page.click(".synth-regenerate")
    _message(page, "regenerate finished")
    assert page.locator(".synth-error").count() == 0

    # reload the downloaded mask into the page
    renamed = tmp_path / "reloaded.nii.gz"
    shutil.copy(tmp_path / "pair/MedDDPMSynth/labelsTr/synth_001.nii.gz", renamed)
    _upload(page, renamed, "reloaded")
    page.close()


def test_wrong_token_is_refused(server, browser):
    page = browser.new_page()
    page.set_default_timeout(WAIT_S * 1000)
    assert page.goto(f"{server}/?token=wrong").status == 403
    assert "access token" in page.text_content("body")
    assert page.goto(f"{server}/").status == 403
    assert page.goto(f"{server}/download").status == 403
    # another site's page cannot open the app's websocket, even knowing the token
    page.goto("about:blank")
    opened = page.evaluate("""url => new Promise(done => {
        const ws = new WebSocket(url); ws.onopen = () => done(true); ws.onerror = () => done(false); })""",
                           f"{server.replace('http', 'ws')}/ws?token={TOKEN}")
    assert opened is False
    page.close()


def test_queue_and_cancel(server, browser):
    """One generation at a time: a second Generate waits in the queue (shown in the page); Cancel stops
    the running one, drops the queue and adds nothing."""
    page = _open(browser, server)
    _upload(page, MASK, "demo_mask")
    page.fill(".synth-steps input", "2")
    page.click(".synth-generate")
    page.click(".synth-generate")  # the engine process needs seconds to start: the first is surely still running
    page.wait_for_selector(".synth-status:has-text('(1 queued)')")
    page.click(".synth-cancel")
    _message(page, "cancelled")
    # an absence can only be watched over a while: a dropped queued job would start at the server's next poll
    # (every fraction of a second), so a correct server passes however long this is; 1.5 s is several polls
    time.sleep(1.5)
    assert page.inner_text(".synth-status").strip() == ""
    assert "v-btn--disabled" in page.get_attribute(".synth-download", "class")  # no result was added
    page.close()


# ------------------------------------------------------------------------------------------- BraTS


@pytest.fixture(scope="module")
def brats_server(tmp_path_factory):
    """The served app with a tiny random BraTS-format model (8 in / 4 out channels, T = 4) as its model,
    imported like a downloaded model_brats.pt on a 32 x 32 x 24 grid of 6 mm (BraTS's field of view)."""
    from cli_helpers import save_random_checkpoint

    from MedDDPMSynthLib import UNetConfig

    home = tmp_path_factory.mktemp("web_brats_home")
    ckpt = save_random_checkpoint(home / "tinybrats.pt", UNetConfig(8, 4, 32, (1, 1), 1, ()), timesteps=4)
    env = {**os.environ, "MEDDDPMSYNTH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "MedDDPMSynthLib", "models", "import", str(ckpt), "--name",
                           "tinybrats", "--grid", "32,32,24", "--spacing", "6,6,6"], env=env, capture_output=True,
                          text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    yield from _serve(home, "tinybrats")


def test_brats_mask_generates_four_modalities(brats_server, browser, tmp_path):
    """A BraTS segmentation (1 necrotic, 2 oedema, 3 enhancing, 4 brain) uploaded to the page works with a
    BraTS model: its segments are the BraTS tissues, Generate gives the four modalities, and the download
    holds one case with four channels and the uploaded labels."""
    page = _open(browser, *brats_server)
    _upload(page, BRATS_SEG, "BraTS2021_00529_seg")
    assert page.locator(".synth-error").count() == 0
    page.fill(".synth-steps input", "2")
    page.click(".synth-generate")
    _message(page, "generate finished")
    assert page.locator(".synth-error").count() == 0

    names = _download_pair(page, tmp_path)
    channels = [f"MedDDPMSynth/imagesTr/synth_001_{c:04d}.nii.gz" for c in range(4)]
    assert set(channels) <= names and "MedDDPMSynth/imagesTr/synth_001_0004.nii.gz" not in names

    dataset = json.loads((tmp_path / "pair/MedDDPMSynth/dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert dataset["labels"] == {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 3, "brain": 4}
    mask = sitk.ReadImage(str(BRATS_SEG))
    label = sitk.ReadImage(str(tmp_path / "pair/MedDDPMSynth/labelsTr/synth_001.nii.gz"))
    assert _same_geometry(label, mask)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(mask).astype(np.uint8))
    brain = sitk.GetArrayFromImage(mask) > 0
    for channel in channels:
        image = sitk.ReadImage(str(tmp_path / "pair" / channel))
        assert _same_geometry(image, mask)
        assert sitk.GetArrayFromImage(image)[brain].std() > 0  # synthetic tissue in every modality
    provenance = json.loads((tmp_path / "pair/MedDDPMSynth/provenance/synth_001.json").read_text())
    assert provenance["family"] == "brats"
    assert [i["channel"] for i in provenance["images"]] == ["t1", "t1ce", "t2", "flair"]
    page.close()


# ----------------------------------------------------------------------------- the bundled demo model


@pytest.fixture(scope="module")
def bundled_server(tmp_path_factory):
    """The app as a user starts it: ``medddpm-synth serve``, whose "demo" is the bundled demo model."""
    yield from _serve(tmp_path_factory.mktemp("web_bundled_home"), "demo", bundled_demo=True)


def test_first_generate_with_the_page_defaults_is_a_brain(bundled_server, browser, tmp_path):
    """What a new user sees first: the bundled demo model and the page's own defaults (the sampler it picks for
    this machine, the preset's steps, seed 0), the example mask uploaded, Generate clicked, nothing else touched.
    The result is a brain on a black background, not noise (the bounds of test_demo_model.py, which the old
    noisy demo file failed), and the page shows it. This capture is the README's picture and the catalogue
    screenshot: MEDDDPMSYNTH_SAVE_SCREENSHOT=1 refreshes docs/images/web_app.png from it."""
    page = _open(browser, *bundled_server)
    _upload(page, MASK, "demo_mask")
    mask_view = _view_pixels(page, tmp_path / "mask_view.png")
    page.click(".synth-generate")
    _message(page, "generate finished")
    assert page.locator(".synth-error").count() == 0
    assert "preview" in page.inner_text(".synth-sampler")  # the page's choice on a CPU: the preview preset
    view = _wait_for_new_picture(page, mask_view, tmp_path / "result_view.png")
    shot = tmp_path / "web_app.png"
    page.screenshot(path=str(shot))

    _download_pair(page, tmp_path)
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pair/MedDDPMSynth/imagesTr/synth_001_0000.nii.gz")))
    image = 2 * image - 1  # the scene's images are in [0, 1] (--intensity unit); the bounds are in the model's [-1, 1]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(MASK)))
    background, brain = image[labels == 0], image[labels == 1].mean()
    print(f"background {background.mean():.3f} +- {background.std():.3f}, brain {brain:.3f}")
    assert background.mean() <= -0.9 and background.std() <= 0.1 and brain > background.mean() + 0.6
    # and the view shows it: a dark surround, a bright brain
    assert np.abs(view - mask_view).mean() > 5 and view.std() > 20
    if os.environ.get("MEDDDPMSYNTH_SAVE_SCREENSHOT"):  # refresh the README's picture on request
        shutil.copy(shot, REPO / "docs" / "images" / "web_app.png")
    page.close()
