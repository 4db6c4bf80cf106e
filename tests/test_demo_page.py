"""`lens demo`: the web page around one loaded model.

In-process (needs gradio, the [demo] extra): the page's answers are `lens segment`'s and `lens track`'s (same mask,
overlay, JSON record, tracks), its example prompts are right for the demo model, bad input gets the line the
commands print, and concurrent requests share the one model. In a real browser (headless Chromium driven by
Selenium, as a user would): the demo scene is uploaded, a command typed and submitted, and the downloaded mask is
checked against the ground truth; a bad upload shows the error line and the page answers the next request.

Without gradio, Chromium or Selenium these tests skip with the reason; under CI=true (`.ci/run` installs them) they
fail instead.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from io import BytesIO

import numpy as np
import pytest
from ci_tools import skip_or_fail
from conftest import REPO, photo_clip, run_cli
from PIL import Image

from lens_model.data.refer import decode_segmentation

DEMO_MODEL = REPO / "assets" / "demo-model"
DEMO_SCENE = REPO / "assets" / "demo-scene.png"
DEMO_SCENE_GT = REPO / "assets" / "demo-scene.json"
ARTEFACTS = REPO / "runs" / "test-artefacts"  # screenshots of the page (runs/ is not tracked)
MIN_IOU = 0.5


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def gt_masks(pad_left: int = 0, pad_top: int = 0, size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Object (by its attribute expression) -> GT mask of the demo scene, shifted by the given padding into an image
    of `size` (H, W)."""
    spec = json.loads(DEMO_SCENE_GT.read_text())
    h, w = size or (128, 128)
    masks = {}
    for obj in spec["objects"]:
        polygons = [[v + (pad_left if i % 2 == 0 else pad_top) for i, v in enumerate(p)] for p in obj["segmentation"]]
        masks[obj["expression"]] = decode_segmentation(polygons, h, w)
    return masks


def target_of(prompt: str) -> str:
    """The object (its attribute expression) a prompt of the demo scene refers to: itself, or a relational
    expression's target."""
    relational = {r["expression"]: r["target"] for r in json.loads(DEMO_SCENE_GT.read_text())["relational"]}
    return relational.get(prompt, prompt)


def read_mask(path_or_bytes) -> np.ndarray:
    source = BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    return np.asarray(Image.open(source)) > 127


def cli_error(args, cwd) -> str:
    """The message `lens ...` prints for bad input, without its 'lens COMMAND: ' prefix."""
    code, _, err = run_cli(*args, cwd=cwd)
    assert code == 1, err
    line = err.strip().splitlines()[-1]
    return line.split(": ", 1)[1]  # "lens segment: error: ..." -> "error: ..."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_app():
    try:
        from lens_cli import demo_app
    except ModuleNotFoundError as exc:
        skip_or_fail(f"{exc.name} is not installed (lens demo needs the [demo] extra: pip install -e '.[demo]')")
    return demo_app


@pytest.fixture(scope="module")
def session(demo_app):
    s = demo_app.DemoSession.load(str(DEMO_MODEL), device="cpu", dtype="float32", model_name="assets/demo-model")
    yield s
    s.close()


@pytest.fixture(scope="module")
def wide_scene(tmp_path_factory):
    """The demo scene padded 40 px on the left (128 x 168, H x W): a non-square image, and its GT masks."""
    from lens_model.image_io import load_image

    path = tmp_path_factory.mktemp("wide") / "wide-scene.png"
    Image.fromarray(np.pad(load_image(DEMO_SCENE), ((0, 0), (40, 0), (0, 0)), mode="edge")).save(path)
    return path, gt_masks(pad_left=40, size=(128, 168))


def test_the_example_prompts_are_right_for_the_demo_model(demo_app, session, wide_scene):
    """Each example prompt of the page segments its object in the demo scene, and each attribute prompt also in the
    scene padded to a non-square image: the mask matches its object's GT and no other object's, and the highlighted
    answer names that object. (The relational prompt is checked on the square scene only: the model's relational
    answers on non-square images are its documented weakness, 640 x 480 gIoU 0.16 below 128 px on its card; padded,
    it answers this one with the green triangle.)"""
    path, masks = wide_scene
    assert {target_of(p) for p in demo_app.DEMO_SCENE_PROMPTS} == set(gt_masks())  # every object, and no other
    relational = [p for p in demo_app.DEMO_SCENE_PROMPTS if target_of(p) != p]
    assert relational  # and a relational prompt
    attribute = [p for p in demo_app.DEMO_SCENE_PROMPTS if p not in relational]
    for image, gts, prompts in ((DEMO_SCENE, gt_masks(), demo_app.DEMO_SCENE_PROMPTS), (path, masks, attribute)):
        for prompt in prompts:
            out = session.segment(str(image), None, prompt)
            assert out.status.startswith(f"segmented “{prompt}” in {image.name}"), out.status
            mask_file, json_file = out.files
            mask = read_mask(mask_file)
            scores = {expression: iou(mask, gt) for expression, gt in gts.items()}
            target = target_of(prompt)
            assert scores[target] >= MIN_IOU and max(scores, key=scores.get) == target, (image.name, prompt, scores)
            answer = [text for text, label in out.parts if label == "answer"]
            assert len(answer) == 1 and target.removeprefix("the ") in answer[0], out.parts
            assert "".join(text for text, _ in out.parts) == json.loads(json_file.read_text())["text"]


def test_the_page_gives_what_lens_segment_writes(session, wide_scene, tmp_path):
    """Mask PNG, overlay and JSON record of the page equal those of `lens segment --out-mask --out-overlay --json`
    on the same (non-square) image: same pixels, same fields in the same order, same values but the timings."""
    path, _ = wide_scene
    prompt = "the blue circle"
    code, out, err = run_cli(
        "segment", "--model", DEMO_MODEL, "--image", path.name, "--prompt", prompt, "--device", "cpu",
        "--dtype", "float32", "--out-mask", "cli-mask.png", "--out-overlay", "cli-overlay.png", "--json",
        "cli.json", cwd=path.parent,
    )  # fmt: skip
    assert code == 0, err
    cli = json.loads((path.parent / "cli.json").read_text())
    answer = session.segment(str(path), None, prompt)
    mask_file, json_file = answer.files
    page = json.loads(json_file.read_text())
    assert list(page) == list(cli)
    assert page.pop("timings").keys() == cli.pop("timings").keys()
    assert page.pop("mask_png") == mask_file.name == "wide-scene-mask.png" and cli.pop("mask_png") == "cli-mask.png"
    assert page.pop("overlay_png") == answer.overlay.name and cli.pop("overlay_png") == "cli-overlay.png"
    assert page.pop("model") == "assets/demo-model" and cli.pop("model") == str(DEMO_MODEL)
    assert page == cli
    assert page["image"] == "wide-scene.png" and page["image_size"] == [128, 168]
    np.testing.assert_array_equal(read_mask(mask_file), read_mask(path.parent / "cli-mask.png"))
    np.testing.assert_array_equal(
        np.asarray(Image.open(answer.overlay)), np.asarray(Image.open(path.parent / "cli-overlay.png"))
    )
    assert json.loads(out) == json.loads((path.parent / "cli.json").read_text())  # what it printed, it wrote


def test_bad_input_gets_the_line_lens_segment_prints_and_the_page_goes_on(session, tmp_path):
    (tmp_path / "broken.png").write_text("not an image")
    Image.new("RGB", (5000, 10), (90, 90, 90)).save(tmp_path / "strip.png")
    shutil.copy(DEMO_SCENE, tmp_path / "scene.png")
    cases = [("broken.png", "the green triangle"), ("strip.png", "the green triangle"), ("scene.png", "   ")]
    for name, prompt in cases:
        # the page gets the upload under gradio's own path; its messages name the file as the user knows it
        upload = tmp_path / "upload-cache" / name
        upload.parent.mkdir(exist_ok=True)
        shutil.copy(tmp_path / name, upload)
        answer = session.segment(str(upload), name, prompt)
        expected = cli_error(["segment", "--model", DEMO_MODEL, "--image", name, "--prompt", prompt], tmp_path)
        assert answer.status == expected, (answer.status, expected)
        assert "\n" not in answer.status and str(upload.parent) not in answer.status
        assert answer.overlay is None and not answer.files and not answer.parts
    assert session.segment(None, None, "the green triangle").status == "error: no image: upload one or pick an example"
    good = session.segment(str(DEMO_SCENE), None, "the red triangle")
    assert iou(read_mask(good.files[0]), gt_masks()["the red triangle"]) >= MIN_IOU


def test_the_demo_model_cannot_track_and_the_video_tab_says_why_in_one_line(session):
    assert session.memory is None and session.tracking_off is not None
    assert "no SAM2 memory weights" in session.tracking_off and "\n" not in session.tracking_off
    answer = session.track(str(DEMO_SCENE), None, "the green triangle")
    assert answer.status == f"error: {session.tracking_off}" and answer.video is None


def _write_clip(path, frames):
    from lens_model.tracking.video_io import VideoWriter

    with VideoWriter(path, fps=10) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def test_the_video_tab_gives_what_lens_track_writes(demo_app, tiny_dir, tmp_path):
    """With a tiny model that carries SAM2 memory weights (`lens make-tiny`), the video tab tracks a non-square
    clip and writes the tracks and masks that `lens track` writes for it, and the overlay video has every frame."""
    from lens_model.tracking.video_io import count_frames

    clip = _write_clip(tmp_path / "clip.mp4", photo_clip(9, (48, 80)))
    tiny = demo_app.DemoSession.load(str(tiny_dir), device="cpu", dtype="float32")
    try:
        assert tiny.tracking_off is None and tiny.memory is not None
        answer = tiny.track(str(clip), None, "the helmet", 4)
        assert answer.status.startswith("tracked “the helmet” in clip.mp4: 9 frames, 3 LENS queries"), answer.status
        code, _, err = run_cli(
            "track", "--model", tiny_dir, "--video", clip, "--prompt", "the helmet", "--out-dir", tmp_path / "cli",
            "--reason-every", "4", "--device", "cpu", "--dtype", "float32", "--no-progress",
        )  # fmt: skip
        assert code == 0, err
        (tracks,) = answer.files
        assert tracks.read_text() == (tmp_path / "cli" / "tracks.jsonl").read_text()
        for record in map(json.loads, tracks.read_text().splitlines()):
            page_mask = read_mask(tracks.parent / record["mask_png"])
            assert page_mask.shape == (48, 80)
            np.testing.assert_array_equal(page_mask, read_mask(tmp_path / "cli" / record["mask_png"]))
        assert answer.video.name == "overlay.mp4" and count_frames(answer.video) == 9
        (tmp_path / "broken.mp4").write_text("not a video")
        upload = tmp_path / "upload-cache"
        upload.mkdir()
        shutil.copy(tmp_path / "broken.mp4", upload / "broken.mp4")
        expected = cli_error(
            ["track", "--model", tiny_dir, "--video", "broken.mp4", "--prompt", "x", "--out-dir", "out"], tmp_path
        )
        assert tiny.track(str(upload / "broken.mp4"), "broken.mp4", "the helmet").status == expected
        assert (
            tiny.track(str(clip), None, "").status
            == "error: prompt is empty: pass a text command such as 'the red cup'"
        )
    finally:
        tiny.close()


def test_concurrent_requests_are_queued_on_the_one_model(demo_app, session):
    """Four users at once on the served page (gradio's API, as a browser posts): each gets its own object, the
    process holds one model, and both tabs' events run in one queue of size 1."""
    import gc

    from gradio_client import Client, handle_file

    from lens_model.model.modeling import LensModel

    port = free_port()
    app = demo_app.launch(session, "127.0.0.1", port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        answers = {}

        def ask(prompt):
            answers[prompt] = client.predict(handle_file(str(DEMO_SCENE)), prompt, api_name="/segment")

        threads = [threading.Thread(target=ask, args=(p,)) for p in demo_app.DEMO_SCENE_PROMPTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        gts = gt_masks()
        for prompt, (status, _, _, _, files) in answers.items():
            assert status.startswith(f'<p class="lens-done">segmented “{prompt}”'), status
            assert iou(read_mask(files[0]), gts[target_of(prompt)]) >= MIN_IOU, prompt
        assert len(answers) == len(demo_app.DEMO_SCENE_PROMPTS)
        gc.collect()
        assert sum(isinstance(o, LensModel) for o in gc.get_objects()) == 1
        model_events = [fn for fn in app.fns.values() if fn.api_name in ("segment", "track")]
        assert sorted(fn.api_name for fn in model_events) == ["segment", "track"]
        assert {(fn.concurrency_id, fn.concurrency_limit) for fn in model_events} == {(demo_app.MODEL_GROUP, 1)}
    finally:
        app.close()


def test_the_command_warns_when_the_page_is_opened_to_the_network_and_refuses_a_busy_port(demo_app):
    code, _, err = run_cli("demo", "--host", "0.0.0.0", "--port", free_port(), "--model", "no/such-model-dir/")
    assert code == 1
    assert "warning: --host 0.0.0.0: the page is reachable by anyone on the network" in err
    assert err.strip().splitlines()[-1] == "lens demo: error: model directory not found: no/such-model-dir"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli("demo", "--port", port)
    assert code == 1 and "warning" not in err
    assert (
        err.strip()
        == f"lens demo: error: cannot listen on 127.0.0.1:{port} (Address already in use); pass a free port with --port"
    )


# ---------------------------------------------------------------------------------------------- in a real browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
STARTUP_S = 180  # python, torch, gradio and the model, on a busy 2-core machine
ANSWER_S = 120


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ModuleNotFoundError:
        skip_or_fail("selenium is not installed (pip install 'selenium==4.51.0', in the [test] extra)")
    if CHROMIUM is None or CHROMEDRIVER is None:
        skip_or_fail("no headless browser: apt-get install chromium chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers on the internet
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served_demo(demo_app, tmp_path_factory):
    """`lens demo` with its defaults (the bundled demo model, 127.0.0.1) on a free port, as a user starts it."""
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "lens_cli", "demo", "--port", str(port), "--device", "cpu"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_S
    while True:
        if server.poll() is not None:
            pytest.fail(f"lens demo exited with {server.returncode}:\n{log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"lens demo did not answer on {url} in {STARTUP_S} s:\n{log.read_text()}")
            time.sleep(1)
    yield url, log
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _text(driver, selector: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0].text if found else ""


def _ask(driver, image, prompt: str, expect: str) -> None:
    """Upload `image`, type `prompt`, press Segment and wait until the status line starts with `expect`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.CSS_SELECTOR, "#image-input input[type=file]").send_keys(str(image))
    # the upload is done when the page shows it (or, for a file that is no picture, offers to remove it)
    WebDriverWait(driver, ANSWER_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#image-input img, #image-input button[aria-label='Remove Image']")
    )
    box = driver.find_element(By.CSS_SELECTOR, "#image-prompt textarea, #image-prompt input")
    box.clear()
    box.send_keys(prompt)
    driver.find_element(By.CSS_SELECTOR, "#segment-button").click()
    WebDriverWait(driver, ANSWER_S).until(lambda d: _text(d, "#image-status").startswith(expect))


def _clear_image(driver) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.CSS_SELECTOR, "#image-input button[aria-label='Remove Image']").click()
    WebDriverWait(driver, ANSWER_S).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#image-input img"))


def _downloaded_mask(driver) -> np.ndarray:
    from selenium.webdriver.common.by import By

    links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#downloads a")]
    (mask_url,) = [h for h in links if h and h.endswith("-mask.png")]
    return read_mask(urllib.request.urlopen(mask_url, timeout=30).read())


def _screenshot(driver, name: str):
    """The whole page as a PNG under runs/test-artefacts (look at it)."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    width, height = driver.get_window_size().values()
    driver.set_window_size(width, driver.execute_script("return document.body.scrollHeight") + 40)
    driver.save_screenshot(str(ARTEFACTS / name))
    driver.set_window_size(width, height)
    return ARTEFACTS / name


def test_in_a_browser_the_page_segments_the_demo_scene_and_answers_bad_input(served_demo, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, log = served_demo
    browser.get(url)
    WebDriverWait(browser, ANSWER_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#segment-button"))
    assert "assets/demo-model" in _text(browser, "body")
    gts = gt_masks()

    prompt = "the shape below the red triangle"  # the README's relational prompt: its target is the yellow square
    _ask(browser, DEMO_SCENE, prompt, f"segmented “{prompt}” in demo-scene.png")
    overlay = browser.find_element(By.CSS_SELECTOR, "#overlay img")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) == 128
    assert "yellow square {" in _text(browser, "#answer")  # the answer names the object found, then its box
    assert "sam_decode" in _text(browser, "#details") and "score" in _text(browser, "#details")
    mask = _downloaded_mask(browser)
    assert iou(mask, gts[target_of(prompt)]) >= MIN_IOU, {e: iou(mask, g) for e, g in gts.items()}
    print(f"screenshot: {_screenshot(browser, 'demo-page.png')}")

    (tmp_path / "broken.png").write_text("not an image")
    _clear_image(browser)
    expected = cli_error(["segment", "--model", DEMO_MODEL, "--image", "broken.png", "--prompt", "x"], tmp_path)
    _ask(browser, tmp_path / "broken.png", "the green triangle", "error:")
    assert _text(browser, "#image-status") == expected
    assert not browser.find_elements(By.CSS_SELECTOR, "#overlay img")  # the old result is not left standing
    _screenshot(browser, "demo-page-error.png")

    _clear_image(browser)
    _ask(browser, DEMO_SCENE, "the blue circle", "segmented “the blue circle”")
    mask = _downloaded_mask(browser)
    assert iou(mask, gts["the blue circle"]) >= MIN_IOU, {e: iou(mask, g) for e, g in gts.items()}

    browser.find_element(By.XPATH, "//button[@role='tab'][normalize-space()='Video']").click()
    WebDriverWait(browser, ANSWER_S).until(lambda d: _text(d, "#video-off"))
    assert _text(browser, "#video-off").startswith("Tracking is off for this model: model ")
    assert not browser.find_element(By.CSS_SELECTOR, "#track-button").is_enabled()
