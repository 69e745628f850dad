"""Chapter 0 in a real browser, as a student uses it: JupyterLab started from this checkout,
Debian's Chromium driven by Playwright, Run ▸ Run All Cells, then Generate clicked in the studio.

The widgets, the kernel and JupyterLab's front end all take part here, which the notebook tests
(nbclient, no front end) cannot check. Screenshots of each step, and of the page when a step
fails, go to artifacts/screenshots/ (git-ignored).

Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it). Without it the test
is skipped on a developer's machine and fails in CI (CI=true), where it must run.
"""

import hashlib
import os
import re
from contextlib import contextmanager

import pytest
from playwright.sync_api import expect
from jupyterlab_browser import (CHROMIUM, NOTEBOOKS, RED_BOX, ROOT, VIEWPORT, chromium, jupyterlab,
                                open_notebook, red_boxes, run_all, unrun_cells, wait_until_run)

CHAPTER_0 = "00_start_here.ipynb"
SHOTS = ROOT / "artifacts" / "screenshots"
WAIT_MS = 150_000  # any one wait: Run All loads the tiny model and makes a picture (~30 s on a loaded 2-core machine)
EXPECT_MS = 30_000  # what follows a step that has been waited for
SEED = 7  # typed into the studio: chapter 0's own cells use seed 1, so the picture with seed 7 is the click's

pytestmark = pytest.mark.timeout(480)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium (Debian's package)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{message}; .ci/run installs it, so in CI this test must run", pytrace=False)
        pytest.skip(message)
    with jupyterlab(tmp_path_factory.mktemp("jupyterlab")) as lab:
        yield lab


@pytest.fixture(scope="module")
def browser(lab):
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


@contextmanager
def screenshot_on_failure(page, name: str):
    """Screenshots named `name`-*.png: the last run's are removed first, `name`-failure.png is the page
    when the block fails."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob(f"{name}-*.png"):
        old.unlink()
    try:
        yield
    except BaseException:
        screenshot(page, f"{name}-failure")
        raise


def screenshot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_chapter_0_runs_and_the_studio_generates_in_a_browser(lab, page):
    committed = sha256(NOTEBOOKS / CHAPTER_0)
    with screenshot_on_failure(page, "chapter0"):
        open_notebook(page, lab, CHAPTER_0)
        run_all(page, WAIT_MS)
        screenshot(page, "chapter0-1-run-all")
        assert red_boxes(page) == [], "a cell shows an error or stderr output after Run All"
        assert unrun_cells(page) == [], "Run All left cells without an execution count"

        studio = page.locator(".jp-CodeCell", has_text="app = studio(")
        seed = studio.locator(".widget-text", has_text="Seed").locator("input")
        seed.fill(str(SEED))
        seed.press("Tab")  # the box sends its value when it loses focus, before the click below
        studio.locator(".jupyter-widgets button", has_text="Generate").click()
        # the status line says when the run is over: done (with the typed seed), or an error
        status = studio.locator(".widget-html", has_text=re.compile(rf"✅ 1 image\(s\), 64×64, seed {SEED}\b|❌"))
        status.wait_for()
        assert "✅" in status.inner_text(), status.inner_text()
        # the gallery's new views may be drawn just after the status line: wait for them
        gallery = studio.locator(".widget-gridbox")
        expect(gallery.locator("img")).to_have_count(1, timeout=EXPECT_MS)
        expect(gallery.locator("img:not(.tldm-stale)")).to_have_count(1, timeout=EXPECT_MS)  # this run's
        expect(gallery).to_contain_text(f"Seed: {SEED},", timeout=EXPECT_MS)  # its settings, A1111's format
        # the PNG arrived and the browser decoded it: the tiny model's 64×64 pixels
        picture = gallery.locator("img").element_handle()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=picture, timeout=EXPECT_MS)
        assert picture.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]
        studio.locator(".jp-OutputArea").scroll_into_view_if_needed()
        screenshot(page, "chapter0-2-generate")
        assert red_boxes(page) == [], "a cell shows an error or stderr output after Generate"
    assert sha256(NOTEBOOKS / CHAPTER_0) == committed, "the notebook in the repository was written"


def test_the_red_box_check_sees_errors_and_stderr(lab, page):
    """The check above is not vacuous: in this JupyterLab, an exception and a stderr line are
    both found, and waiting for a run returns at the first red box instead of timing out."""
    with screenshot_on_failure(page, "red-boxes"):
        open_notebook(page, lab, CHAPTER_0)
        last = page.locator(".jp-Notebook .jp-Cell").last
        last.locator(".jp-InputPrompt").click()  # select it (command mode)
        page.keyboard.press("b")  # a new cell below
        page.keyboard.press("Enter")  # edit it
        page.keyboard.insert_text("import sys\nprint('a notice', file=sys.stderr)\n1 / 0")
        page.keyboard.press("Shift+Enter")
        wait_until_run(page, WAIT_MS)
        page.locator(RED_BOX, has_text="ZeroDivisionError").wait_for()
        boxes = red_boxes(page)
        assert len(boxes) == 2 and "a notice" in boxes[0] and "ZeroDivisionError" in boxes[1], boxes
        assert unrun_cells(page)  # chapter 0's own cells did not run in this page
