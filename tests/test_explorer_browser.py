"""The explorer page driven in a real headless Chromium (Debian's ``chromium`` through Playwright's
``executable_path``): hover, click to decode, drag a slider, interpolate, upload an image.

Skipped where no browser is installed, except when VAEKIT_REQUIRE_BROWSER=1 (CI sets it), where a
missing browser fails the run instead."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REQUIRED = os.environ.get("VAEKIT_REQUIRE_BROWSER") == "1"


def _need(condition: bool, why: str) -> None:
    if not condition:
        if REQUIRED:
            pytest.fail(f"VAEKIT_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    try:
        import playwright.sync_api  # noqa: F401
        has_playwright = True
    except ImportError:
        has_playwright = False
    _need(has_playwright, "playwright is not installed")
    _need(_chromium() is not None, "no chromium on PATH (apt-get install chromium)")
    pytest.importorskip("starlette")
    from vaekit.cli import main

    run = tmp_path_factory.mktemp("browser") / "run"
    assert main(["train", "--data", "digits", "--epochs", "3", "--latent-dim", "4", "--hidden", "64",
                 "--out", str(run), "--quiet"]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "vaekit.cli", "explore", str(run), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    deadline = time.time() + 120
    while time.time() < deadline and "exploring" not in line and proc.poll() is None:
        line = proc.stdout.readline()
    if "exploring" not in line:
        proc.kill()
        raise AssertionError(f"explorer did not start: {line!r} {proc.stderr.read()}")
    yield line.split(" at ", 1)[1].split()[0]
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(page_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 950})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(page_url)
        pg.wait_for_function("window.vaekitReady === true", timeout=60000)
        pg.errors = errors
        yield pg
        browser.close()


def _decoded(pg) -> str:
    """The decoded example as the page drew it (the canvas' pixels as a data URL)."""
    return pg.evaluate("document.querySelector('#decoded canvas').toDataURL()")


def _wait_version(pg, version: int) -> None:
    pg.wait_for_function(f"Number(document.getElementById('decoded').dataset.version || 0) >= {version}",
                         timeout=20000)


def _map_point(pg, i: int) -> tuple[float, float]:
    box = pg.locator("#map").bounding_box()
    x, y = pg.evaluate(f"toPx(S.state.coords[{i}])")
    return box["x"] + x, box["y"] + y


def test_hover_shows_the_example(page):
    x, y = _map_point(page, 0)
    page.mouse.move(x, y)
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible", timeout=5000)
    assert "#0" in tip.inner_text() and "score" in tip.inner_text()
    assert page.locator("#tooltip canvas").count() == 1
    page.mouse.move(5, 5)  # off the map: the tooltip goes
    page.wait_for_function("document.getElementById('tooltip').classList.contains('hidden')")


def test_click_decodes_and_a_slider_moves_it(page):
    box = page.locator("#map").bounding_box()
    v0 = int(page.evaluate("window.vaekitTimings.length"))
    page.mouse.click(box["x"] + 25, box["y"] + 25)  # a corner: empty space, a point of the map
    _wait_version(page, v0 + 1)
    first = _decoded(page)
    page.mouse.click(box["x"] + box["width"] - 25, box["y"] + box["height"] - 25)
    _wait_version(page, v0 + 2)
    second = _decoded(page)
    assert first != second
    # the first slider (the dimension with the most KL) moved to its far end: the decoded image follows
    slider = page.locator("#sliders input").first
    assert slider.is_enabled()
    v = int(page.evaluate("window.vaekitTimings.length"))
    page.evaluate("""() => { const s = document.querySelector('#sliders input');
                             s.value = s.max; s.dispatchEvent(new Event('input')); }""")
    _wait_version(page, v + 1)
    page.wait_for_function("!S.busy && !S.pending")
    moved = _decoded(page)
    assert moved != second
    z0 = page.evaluate("S.z[Number(document.querySelector('#sliders input').dataset.dim)]")
    assert z0 == pytest.approx(float(slider.get_attribute("max")), rel=1e-6)
    assert not page.errors


def test_pick_two_examples_and_interpolate(page):
    for i, button in ((3, "#set-a"), (7, "#set-b")):
        page.mouse.click(*_map_point(page, i))
        page.wait_for_function(f"S.selected === {i}")
        page.click(button)
    page.select_option("#interp-method", "slerp")
    page.click("#interp-go")
    page.wait_for_function("document.querySelectorAll('#strip canvas').length === 10", timeout=20000)
    frames = page.evaluate("[...document.querySelectorAll('#strip canvas')].map(c => c.toDataURL())")
    assert frames[0] != frames[-1]


def test_upload_an_image_and_read_its_score(page, tmp_path):
    from PIL import Image

    img = np.zeros((8, 8), dtype=np.uint8)
    img[1:7, 3:5] = 255  # a "1"
    path = tmp_path / "mine.png"
    Image.fromarray(img).save(path)
    page.set_input_files("#upload", str(path))
    page.locator("[data-role=verdict]").first.wait_for(timeout=20000)
    verdict = page.locator("[data-role=verdict]").first.inner_text()
    score = page.locator("[data-role=score]").first.inner_text()
    assert verdict in ("normal", "anomalous") and "score" in score and "threshold" in score
    assert page.evaluate("S.uploads.length") == 1
    # a file the run cannot read: one line on the page, no crash
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    page.set_input_files("#upload", str(bad))
    page.locator("[data-role=error]").wait_for(timeout=20000)
    assert ".txt" in page.locator("[data-role=error]").inner_text()
    page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
    assert (tmp_path / "explorer.png").stat().st_size > 10_000
    assert not page.errors
