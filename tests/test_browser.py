"""The demo page in a real headless Chromium: a real `posekd serve` on the committed default models,
a real photo uploaded through the page's file input, and the skeletons checked on the page's canvas.
The screenshot is kept as a test artefact (tests/artifacts/demo.png) to be looked at."""
from __future__ import annotations

import os
import shutil
import sys

import httpx
import pytest

from service.shared import data_dir

from .procs import ROOT, Proc, free_port, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                 reason="needs Chromium and ChromeDriver (Debian: apt-get install chromium "
                                        "chromium-driver; .ci/run installs them)")]
ARTIFACTS = ROOT / "tests" / "artifacts"
DATA = data_dir()
BASKETBALL = DATA / "opencv_samples" / "basketball1.png"
EXAMPLE = ROOT / "service" / "api" / "static" / "demo" / "astronaut.jpg"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSEKD_")}
    env.update(POSEKD_MODEL_STORE=str(ROOT / "model_store"), POSEKD_STORE_POLL_S="0")
    port = free_port()
    log = tmp_path_factory.mktemp("browser") / "api.log"
    proc = Proc([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env, log)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(base + "/readyz", timeout=1).status_code == 200, 60, "API ready", proc)
    yield base
    proc.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,1500", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


CHANGED_PIXELS = """
const canvas = document.querySelector('article.card canvas');
const img = await createImageBitmap(await (await fetch(arguments[0])).blob(), {imageOrientation: 'from-image'});
const plain = new OffscreenCanvas(canvas.width, canvas.height).getContext('2d');
plain.drawImage(img, 0, 0, canvas.width, canvas.height);
const a = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
const b = plain.getImageData(0, 0, canvas.width, canvas.height).data;
let changed = 0;
for (let i = 0; i < a.length; i += 4) {
  if (Math.abs(a[i] - b[i]) + Math.abs(a[i + 1] - b[i + 1]) + Math.abs(a[i + 2] - b[i + 2]) > 60) changed++;
}
return changed;
"""


def test_the_demo_page_draws_the_skeletons_of_an_uploaded_photo(service, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo, at_least = (BASKETBALL, 2) if BASKETBALL.is_file() else (EXAMPLE, 1)
    browser.get(service + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))  # the pickers came from /v1/models
    models = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#model option")]
    assert "pose-s" in models
    browser.find_element(By.ID, "files").send_keys(str(photo))
    card = wait.until(lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, "article.card[data-status=done], "
                                                                           "article.card[data-status=error]")), None))
    summary = card.find_element(By.CSS_SELECTOR, ".summary").text
    assert card.get_attribute("data-status") == "done", summary
    assert int(card.get_attribute("data-people")) >= at_least, summary
    assert "inference" in summary and "ms" in summary  # timings shown
    # the skeletons are on the canvas: compare it with the same photo drawn plainly
    served = "/static/demo/astronaut.jpg" if photo == EXAMPLE else None
    if served is None:  # give the page the uploaded photo to compare against
        browser.execute_script("window.__photo = arguments[0]", photo.read_bytes().hex())
        served = browser.execute_script(
            "const h = window.__photo; const b = new Uint8Array(h.length / 2);"
            "for (let i = 0; i < b.length; i++) b[i] = parseInt(h.substr(2 * i, 2), 16);"
            "return URL.createObjectURL(new Blob([b]));")
    changed = browser.execute_script(CHANGED_PIXELS, served)
    assert changed > 800, changed  # boxes, limbs and joints were drawn
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "demo.png"))
    assert (ARTIFACTS / "demo.png").stat().st_size > 10_000


VTEST = DATA / "opencv_samples" / "vtest.avi"


@pytest.mark.data
@pytest.mark.skipif(not VTEST.is_file(), reason="needs ../shared/data/opencv_samples/vtest.avi")
def test_the_demo_page_tracks_the_people_of_a_clip(service, browser, tmp_path):
    """A 3-second cut of vtest.avi through the page: job progress, then the tracks drawn over the video
    and the service's overlay MP4 offered for download."""
    import av
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    clip = tmp_path / "walkers.mp4"
    with av.open(str(VTEST)) as src, av.open(str(clip), "w") as dst:
        stream = dst.add_stream("mpeg4", rate=10)
        first = True
        for i, frame in enumerate(src.decode(video=0)):
            if i >= 30:
                break
            if first:
                stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
                first = False
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    browser.get(service + "/")
    wait = WebDriverWait(browser, 120)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    browser.find_element(By.ID, "files").send_keys(str(clip))
    card = wait.until(lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, "article.card.video[data-status=done], "
                                                                           "article.card.video[data-status=error]")),
                                     None))
    summary = card.find_element(By.CSS_SELECTOR, ".summary").text
    assert card.get_attribute("data-status") == "done", summary
    assert int(card.get_attribute("data-tracks")) >= 2 and "30 frames" in summary, summary
    wait.until(lambda d: card.find_elements(By.CSS_SELECTOR, ".overlay-link a"))
    # whichever it shows (the upload with the tracks drawn over it, or the service's overlay), it plays
    wait.until(lambda d: d.execute_script("const v = document.querySelector('article.card.video video');"
                                          "return v.readyState > 0 && v.videoWidth > 0;"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    card.screenshot(str(ARTIFACTS / "demo-video.png"))
