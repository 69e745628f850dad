"""Screenshot of the studio in a real JupyterLab, after one Generate click (a dev tool).

Starts JupyterLab (from the project's venv) on notebooks/, opens 00_start_here.ipynb in headless
Chromium, runs the studio cell, clicks Generate, waits for the result and saves a screenshot.
JupyterLab's settings and workspace live in a temporary folder with autosave off, so the
notebook in the repository is never written.

Needs Debian's `chromium` and Playwright's Python package in a venv of its own, not the project's:

    apt-get install -y chromium fonts-noto-color-emoji fonts-wqy-microhei   # fonts: emoji, Chinese
    python3 -m venv /tmp/shotvenv && /tmp/shotvenv/bin/pip install playwright==1.65.2
    /tmp/shotvenv/bin/python bench/screenshot_studio.py --python /work/main/.venv/bin/python \
        --out /work/studio-screenshot.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tutorial_ldm.paths import REPO_ROOT

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SETTINGS = {  # JupyterLab user settings: never save the notebook, no news pop-up
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
}


def start_lab(python: str, port: int, settings_dir: Path) -> subprocess.Popen:
    for name, value in SETTINGS.items():
        path = settings_dir / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "JUPYTERLAB_SETTINGS_DIR": str(settings_dir / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(settings_dir / "workspaces")}
    lab = subprocess.Popen(
        [python, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.token=",
         "--ServerApp.password=", f"--notebook-dir={REPO_ROOT / 'notebooks'}",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=subprocess.DEVNULL, stderr=open(settings_dir / "lab.log", "w"),
    )
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://localhost:{port}/api/status", timeout=2)
            return lab
        except OSError:
            if lab.poll() is not None:
                raise RuntimeError(f"JupyterLab exited; see {settings_dir / 'lab.log'}")
            time.sleep(1)
    lab.terminate()
    raise TimeoutError("JupyterLab did not start within 2 minutes")


GENERATE = {"en": "Generate", "zh": "生成"}


def screenshot(port: int, out: Path, timeout_ms: int, lang: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(timeout_ms)
        page.goto(f"http://localhost:{port}/lab/tree/00_start_here.ipynb")
        page.locator(".jp-Notebook .jp-Cell").first.wait_for()
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for()

        studio_cell = page.locator(".jp-CodeCell", has_text="app = studio(")
        studio_cell.scroll_into_view_if_needed()
        if lang != "en":  # the same cell, with the studio in another language (not saved)
            studio_cell.locator(".cm-content").click()
            page.keyboard.press("Control+A")
            page.keyboard.type(f'from tutorial_ldm.widgets import studio\n\napp = studio(lang="{lang}")\napp')
            page.keyboard.press("Escape")
        studio_cell.locator(".jp-InputPrompt").click()  # select the cell (command mode)
        page.keyboard.press("Control+Enter")  # run it, stay on it
        generate = studio_cell.locator(".jupyter-widgets button", has_text=GENERATE[lang])
        generate.wait_for()
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for()
        generate.click()
        studio_cell.locator(".widget-html", has_text="✅").wait_for()
        studio_cell.locator(".jp-OutputArea").scroll_into_view_if_needed()
        page.wait_for_timeout(500)  # let the last image paint
        page.screenshot(path=str(out))
        status = studio_cell.locator(".widget-html", has_text="✅").inner_text()
        browser.close()
    print(f"studio status: {status}")
    print(f"screenshot:    {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the project venv's python (runs JupyterLab)")
    parser.add_argument("--out", default="/work/studio-screenshot.png", help="PNG to write")
    parser.add_argument("--port", type=int, default=8891)
    parser.add_argument("--timeout", type=float, default=300, help="seconds for each wait")
    parser.add_argument("--lang", choices=sorted(GENERATE), default="en", help="the studio's language")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="studio-shot-") as tmp:
        lab = start_lab(args.python, args.port, Path(tmp))
        try:
            screenshot(args.port, Path(args.out), int(args.timeout * 1000), args.lang)
        finally:
            lab.terminate()
            lab.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
