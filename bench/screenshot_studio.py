"""Screenshot of the studio in a real JupyterLab, after one Generate click (a dev tool).

Starts JupyterLab (from the project's venv) on notebooks/, opens 00_start_here.ipynb in headless
Chromium, runs the studio cell, switches the language if asked (the studio's English / 中文
buttons), types a batch size, clicks Generate, waits for the result and saves a screenshot.
JupyterLab and the browser are set up as in the browser test (tests/jupyterlab_browser.py): its
settings and workspace in a temporary folder with autosave off, so the notebook in the
repository is never written. It fails if the cell shows anything on stderr (JupyterLab's red
boxes): the picture a visitor sees first must not show warnings.

Needs Debian's `chromium` (Playwright comes with the project's dev extra); fonts for the emoji
and the Chinese labels:

    apt-get install -y chromium fonts-noto-color-emoji fonts-wqy-microhei
    .venv/bin/python bench/screenshot_studio.py --out docs/studio.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from jupyterlab_browser import VIEWPORT, chromium, jupyterlab, open_notebook, red_boxes, wait_for_idle_kernel  # noqa: E402

GENERATE = {"en": "Generate", "zh": "生成"}
LANGUAGE_BUTTON = {"en": "English", "zh": "中文"}
BATCH_SIZE = {"en": "Batch size", "zh": "每批数量"}


def screenshot(lab, out: Path, timeout_ms: int, lang: str, batch_size: int) -> None:
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(timeout_ms)
        open_notebook(page, lab, "00_start_here.ipynb")

        studio_cell = page.locator(".jp-CodeCell", has_text="app = studio(")
        studio_cell.scroll_into_view_if_needed()
        studio_cell.locator(".jp-InputPrompt").click()  # select the cell (command mode)
        page.keyboard.press("Control+Enter")  # run it, stay on it
        studio_cell.locator(".jupyter-widgets button", has_text=GENERATE["en"]).wait_for()
        wait_for_idle_kernel(page)
        if lang != "en":  # the studio's own language switch
            studio_cell.locator(".widget-toggle-buttons button", has_text=LANGUAGE_BUTTON[lang]).click()
        generate = studio_cell.locator(".jupyter-widgets button", has_text=GENERATE[lang])
        generate.wait_for()
        batch = studio_cell.locator(".widget-text", has_text=BATCH_SIZE[lang]).locator("input")
        batch.fill(str(batch_size))
        batch.press("Tab")  # the box sends its value when it loses focus, before the click below
        generate.click()
        studio_cell.locator(".widget-html", has_text="✅").wait_for()
        studio_cell.locator(".jp-OutputArea").scroll_into_view_if_needed()
        page.wait_for_timeout(500)  # let the last image paint
        page.screenshot(path=str(out))
        status = studio_cell.locator(".widget-html", has_text="✅").inner_text()
        red = red_boxes(studio_cell)
    if red:
        raise RuntimeError("the studio cell shows stderr output (red boxes in the screenshot):\n" + "\n".join(red))
    print(f"studio status: {status}")
    print(f"screenshot:    {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the project venv's python (runs JupyterLab)")
    parser.add_argument("--out", default="/work/studio-screenshot.png", help="PNG to write")
    parser.add_argument("--port", type=int, default=None, help="JupyterLab's port (default: a free one)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for each wait")
    parser.add_argument("--lang", choices=sorted(GENERATE), default="en", help="the studio's language")
    parser.add_argument("--batch-size", type=int, default=4, help="images in the screenshot's run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="studio-shot-") as tmp:
        with jupyterlab(Path(tmp), python=args.python, port=args.port) as lab:
            screenshot(lab, Path(args.out), int(args.timeout * 1000), args.lang, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
