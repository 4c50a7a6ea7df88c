"""The web page in a real browser: Chromium from the distribution's packages (Debian: chromium-headless-shell or
chromium) driven by Playwright through executable_path (`playwright install` would download a browser; these
machines cannot). The real `attrnet serve` runs on 127.0.0.1; the page is opened, two images are chosen with the
keyboard, the bars appear, and the decisions shown must be the API's. Screenshots at desktop and phone width
(375 px) go to the test's folder, and to $ATTRNET_SCREENSHOT_DIR when set. Skips, saying why, without a browser."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, ...) is not installed")
httpx = pytest.importorskip("httpx", reason="the serve extra (httpx) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python package) is not installed")

REPO = Path(__file__).resolve().parents[1]
CELEBA = REPO.parent / "shared" / "data" / "celeba-8k" / "img_align_celeba"
BROWSER_CANDIDATES = ("/usr/lib/chromium/chromium-headless-shell", "chromium-headless-shell",
                      "/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    """$ATTRNET_CHROMIUM, else the distribution's Chromium (the headless shell first)."""
    if os.environ.get("ATTRNET_CHROMIUM"):
        return os.environ["ATTRNET_CHROMIUM"]
    for name in BROWSER_CANDIDATES:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


BROWSER = find_browser()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium found (apt-get install chromium-headless-shell, "
                                                        "or set ATTRNET_CHROMIUM to a Chromium executable)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(app):
    """`app` under uvicorn in a thread on a free loopback port; yields its URL, stops it after."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server(csv_run, tmp_path_factory):
    """`attrnet serve RUN` as a separate process on 127.0.0.1 (the real command, uvicorn and all)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "attrnet", "serve", str(csv_run["run"]), "--port", str(port),
                                 "--device", "cpu"], stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"attrnet serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"attrnet serve did not come up: {log.read_text()[-2000:]}"
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def photos(csv_run) -> list[Path]:
    """Two real photos (CelebA's, when the shared data is here), else two of the test set's JPEGs."""
    if CELEBA.is_dir():
        found = sorted(CELEBA.glob("*.jpg"))[:2]
        if len(found) == 2:
            return found
    return sorted(Path(csv_run["data"]).glob("*.jpg"))[:2]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=BROWSER, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def _shown(page) -> dict:
    """What the page shows: {file: {attribute: (decision, probability, threshold mark position)}}."""
    return page.eval_on_selector_all(".result[data-state=done]", """cards => Object.fromEntries(cards.map(card => [
        card.dataset.file, Object.fromEntries(Array.from(card.querySelectorAll('.attr')).map(li => [
            li.dataset.attribute,
            [Number(li.dataset.decision), Number(li.dataset.probability), li.querySelector('.mark').style.left,
             li.querySelector('.decision').textContent]]))]))""")


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5000
    if os.environ.get("ATTRNET_SCREENSHOT_DIR"):
        target = Path(os.environ["ATTRNET_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / name)
    return path


def test_page_shows_the_api_decisions_for_two_images(server, browser, photos, csv_run, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("request", lambda req: problems.append(f"off-host request {req.url}")
            if not req.url.startswith((server, "data:", "blob:")) else None)
    choosers = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))  # set early: interception is on before use
    page.goto(server + "/")
    page.wait_for_selector("#test-accuracy")
    saved = json.loads((Path(csv_run["run"]) / "metrics.json").read_text())
    assert page.text_content("#test-accuracy") == f"{saved['mean_accuracy']:.3f}"
    assert page.text_content("#baseline-accuracy") == f"{saved['mean_majority_accuracy']:.3f}"
    assert not page.is_visible("#key-form")  # no key asked for: the server has none

    # by keyboard: Tab reaches the file input first, Enter opens the chooser
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file"
    page.keyboard.press("Enter")
    for _ in range(100):
        if choosers:
            break
        page.wait_for_timeout(100)
    assert choosers, "Enter on the focused file input opened no file chooser"
    choosers[0].set_files([str(p) for p in photos])
    page.wait_for_selector(".result[data-state=done] >> nth=1", timeout=60_000)  # no eval: the page's CSP forbids it
    shown = _shown(page)
    assert sorted(shown) == sorted(p.name for p in photos)

    for photo in photos:
        api = httpx.post(f"{server}/v1/predict", files={"file": (photo.name, photo.read_bytes())}, timeout=30).json()
        result = api["results"][0]["attributes"]
        assert set(result) == set(shown[photo.name]) == {"A", "B"}
        for name, got in result.items():
            decision, probability, mark, text = shown[photo.name][name]
            assert decision == got["decision"]
            assert probability == pytest.approx(got["probability"], abs=1e-5)  # batched with the other image or not
            assert float(mark.rstrip("%")) == pytest.approx(100 * got["threshold"], abs=0.05)
            assert text.endswith("yes" if got["decision"] else "no")
    _screenshot(page, tmp_path, "serve-desktop.png")

    # the toggle, by keyboard: only the attributes present stay visible
    page.focus("#only-present")
    page.keyboard.press("Space")
    assert page.is_checked("#only-present")
    for li in page.query_selector_all(".attr"):
        assert li.is_visible() == (li.get_attribute("data-decision") == "1")
    page.keyboard.press("Space")

    # a file that is not an image gets its own error card; the others stay
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image\n" * 20)
    page.set_input_files("#file", [str(bad)])
    page.wait_for_selector(".result[data-state=error]")
    assert "not a readable image" in page.text_content(".result[data-state=error] .error-text")
    assert len(page.query_selector_all(".result[data-state=done]")) == 2
    # no script error, no CSP violation, nothing fetched from elsewhere; only the refused file's 422
    assert [p for p in problems if "status of 422" not in p] == [], problems
    context.close()


def test_page_fits_a_phone(server, browser, photos, tmp_path):
    context = browser.new_context(viewport={"width": 375, "height": 812}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    page.goto(server + "/")
    page.wait_for_selector("#test-accuracy")
    page.set_input_files("#file", [str(p) for p in photos])
    page.wait_for_selector(".result[data-state=done] >> nth=1", timeout=60_000)  # no eval: the page's CSP forbids it
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing wider than the screen
    for box in (page.query_selector(sel).bounding_box() for sel in (".result", ".drop", "label[for=file]")):
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375
    button = page.query_selector("label[for=file]").bounding_box()
    assert button["height"] >= 44  # a touch target
    _screenshot(page, tmp_path, "serve-phone.png")

    # dragged in: a drop event carrying a file adds a third result
    data = list(photos[0].read_bytes())
    transfer = page.evaluate_handle("""([bytes, name]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], name, {type: "image/jpeg"}));
        return dt; }""", [data, "dropped.jpg"])
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_selector(".result[data-state=done][data-file='dropped.jpg']", timeout=60_000)
    assert len(page.query_selector_all(".result[data-state=done]")) == 3
    context.close()


def test_page_asks_for_the_api_key_and_then_works(browser, csv_run, photos):


    from attrnet.inference import load_model
    from attrnet.serve.app import create_app
    from attrnet.serve.settings import ServeSettings

    app = create_app(load_model(csv_run["run"], device="cpu"), ServeSettings(api_key="open-sesame"))
    with _serving(app) as url:
        page = browser.new_page()
        page.goto(f"{url}/")
        page.wait_for_selector("#key-form", state="visible")
        assert "needs an API key" in page.text_content("#model-summary")
        page.fill("#api-key", "open-sesame")
        page.keyboard.press("Enter")
        page.wait_for_selector("#test-accuracy")
        assert not page.is_visible("#key-form")
        page.set_input_files("#file", [str(photos[0])])
        page.wait_for_selector(".result[data-state=done]", timeout=60_000)
        page.close()


def test_page_draws_each_face_of_a_photo_with_its_attributes(browser, tmp_path_factory, tmp_path):
    """A face model: the photo with one numbered box per face, where the API says the face is, and each face's
    attributes as the API gives them."""
    pytest.importorskip("facenet_pytorch", reason="the faces extra is not installed")

    import matplotlib
    from PIL import Image

    from attrnet.engine.train import fit
    from attrnet.inference import load_model
    from attrnet.serve.app import create_app
    from conftest import CELEBA_NAMES, CELEBA_VALUES, tiny_config, write_celeba

    base = tmp_path_factory.mktemp("face_page")
    data = write_celeba(base / "celeba", CELEBA_NAMES, CELEBA_VALUES, size=(24, 30))
    fit(tiny_config(base / "cache", data__root=data, data__image_size="[40,32]"), base / "run", progress=False)
    grace = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    photo = Image.new("RGB", (900, 640), (90, 120, 90))
    photo.paste(grace.resize((230, 270)), (40, 60))
    photo.paste(grace.resize((410, 480)), (380, 80))
    path = tmp_path / "two.jpg"
    photo.save(path, "JPEG", quality=95)

    with _serving(create_app(load_model(base / "run", device="cpu"))) as url:
        api = httpx.post(f"{url}/v1/predict", files={"file": ("two.jpg", path.read_bytes())}, timeout=60).json()
        faces = api["results"][0]["faces"]
        assert len(faces) == 2
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.goto(url + "/")
        page.wait_for_selector("#model-name:not(:empty)")
        page.set_input_files("#file", [str(path)])
        page.wait_for_selector(".result[data-state=done]", timeout=60_000)
        assert page.get_attribute(".result", "data-faces") == "2"
        boxes = page.eval_on_selector_all(".facebox", "bs => bs.map(b => [b.dataset.face, b.style.left, b.style.top, "
                                                       "b.style.width, b.style.height])")
        for (face, left, top, width, height), want in zip(boxes, faces):
            x1, y1, x2, y2 = want["box"]
            assert [float(v.rstrip("%")) for v in (left, top, width, height)] == pytest.approx(
                [100 * x1 / 900, 100 * y1 / 640, 100 * (x2 - x1) / 900, 100 * (y2 - y1) / 640], abs=1e-3)
        shown = page.eval_on_selector_all(".face", """fs => fs.map(f => Object.fromEntries(Array.from(
            f.querySelectorAll('.attr')).map(li => [li.dataset.attribute, [Number(li.dataset.decision),
            Number(li.dataset.probability)]])))""")
        assert len(shown) == 2
        for got, want in zip(shown, faces):
            for name, (decision, probability) in got.items():
                assert decision == want["attributes"][name]["decision"]
                assert probability == pytest.approx(want["attributes"][name]["probability"], abs=1e-5)
        _screenshot(page, tmp_path, "serve-faces.png")
        assert problems == []
        page.close()
