"""JupyterLab started from this checkout, in Debian's headless Chromium driven by Playwright.

Shared by tests/test_browser.py and bench/screenshot_studio.py. Everything JupyterLab reads or
writes (config, runtime files, settings, workspaces, the kernel spec) lives in a folder the caller
gives, so a developer's own Jupyter setup is neither used nor touched; autosave is off, so the
notebooks in the repository are never written. The kernel is this interpreter with this checkout
first on PYTHONPATH, and the server and the kernel run under the test suite's offline guard
(offline_site/); Chromium gets the flags that stop it calling home. Nothing leaves the machine,
and nothing is downloaded: Playwright drives /usr/bin/chromium (Debian's package), never a
browser of its own (`playwright install` is not needed and never run).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
OFFLINE_SITE = Path(__file__).resolve().parent / "offline_site"

CHROMIUM = Path("/usr/bin/chromium")  # Debian's `chromium` package
# Headless, as root in a container (no sandbox there), and nothing that calls home: no first-run
# page, no background requests, component updates, sync or QUIC, and no host name but localhost
# resolves (the page is on 127.0.0.1). Seen with strace: the only other "connect" left is the
# UDP socket Chromium points at a public IPv6 address to learn whether IPv6 routes, which sends
# nothing.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]
VIEWPORT = {"width": 1400, "height": 1000}

SERVER_CONFIG = {  # jupyter_server_config.json: nothing fetched from outside, only our kernel
    "LabApp": {"news_url": None, "extension_manager": "readonly",
               "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate"},
    "KernelSpecManager": {"ensure_native_kernel": False},
}
SETTINGS = {  # JupyterLab user settings
    # never save the notebook: the repository's copy stays as committed
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    # no "receive Jupyter news?" pop-up
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
    # every cell in the page, on screen or not, so a test sees them all
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

# JupyterLab shows an error and anything written to stderr as this output (a red box)
RED_BOX = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
PROMPT = ".jp-Notebook .jp-CodeCell .jp-InputPrompt"  # a code cell's "[3]:"
RUN_PROMPT = re.compile(r"^\[\d+\]:$")  # a code cell that has run
# The status bar's kernel item: "Python 3 (tutorial-ldm) | Idle" once the kernel is connected and
# idle. (The toolbar's execution indicator says "idle" already before the kernel has started, and
# a Run All clicked then runs nothing.)
KERNEL_STATUS = "#jp-main-statusbar .jp-StatusBar-TextItem[title^='Change kernel']"
# True once every code cell shows an execution count ("[3]:"), or as soon as a red box shows:
# Run All stops at an error, and the cells after it would never get their count.
ALL_RUN_OR_RED = f"""() => {{
    const prompts = [...document.querySelectorAll("{PROMPT}")];
    return document.querySelector("{RED_BOX}") !== null
        || (prompts.length > 0 && prompts.every(p => new RegExp({json.dumps(RUN_PROMPT.pattern)}).test(p.textContent.trim())));
}}"""


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab: `url("lab/tree/x.ipynb")` is an address that logs in with the token."""

    port: int
    token: str
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_config(folder: Path, python: str) -> dict:
    """The config, data (kernel spec) and settings folders; returns the environment naming them."""
    dirs = {name: folder / name for name in ("config", "data", "runtime", "settings", "workspaces", "ipython")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    (dirs["config"] / "jupyter_server_config.json").write_text(json.dumps(SERVER_CONFIG))
    kernel = dirs["data"] / "kernels" / "python3"  # the name the notebooks ask for
    kernel.mkdir(parents=True, exist_ok=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [python, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tutorial-ldm)", "language": "python"}))
    for name, value in SETTINGS.items():
        path = dirs["settings"] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    return {"JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_DATA_DIR": str(dirs["data"]),
            "JUPYTER_PATH": str(dirs["data"]), "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
            "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
            "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]), "IPYTHONDIR": str(dirs["ipython"])}


@contextmanager
def jupyterlab(folder: Path, *, python: str = sys.executable, root_dir: Path = NOTEBOOKS,
               port: int | None = None, timeout: float = 120) -> Iterator[Lab]:
    """JupyterLab on `root_dir` at a loopback port (a free one unless given) with a fresh token,
    its files in `folder`; stopped, with its kernels, on leaving."""
    port, token = port or _free_port(), secrets.token_hex(16)
    env = {**os.environ, **_write_config(folder, python),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(OFFLINE_SITE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    info = Lab(port, token, folder / "lab.log")
    with open(info.log, "w") as out:
        lab = subprocess.Popen(
            [python, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(lab, info, timeout)
        yield info
    finally:
        _stop(lab, folder / "runtime")


def _wait_until_up(lab: subprocess.Popen, info: Lab, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {lab.returncode}:\n{info.log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(info.url("api/status"), timeout=5)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s:\n{info.log.read_text()[-3000:]}")


def _stop(lab: subprocess.Popen, runtime: Path) -> None:
    """SIGTERM: the server shuts its kernels down. Whatever is left after that is killed: the
    server, and any kernel still running from a connection file in this lab's runtime folder."""
    lab.terminate()
    try:
        lab.wait(20)
    except subprocess.TimeoutExpired:
        lab.kill()
        lab.wait(10)
    for pid in _kernels_started_from(runtime):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kernels_started_from(runtime: Path) -> list[int]:
    """Processes whose command line names a file in `runtime` (kernels get `-f runtime/kernel-….json`)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.startswith(str(runtime).encode() + b"/") for arg in argv):
            pids.append(int(proc.name))
    return pids


@contextmanager
def chromium(timeout_ms: float = 30_000):
    """A headless Debian Chromium under Playwright; closed on leaving."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=timeout_ms)
        try:
            yield browser
        finally:
            browser.close()


def open_notebook(page, lab: Lab, name: str) -> None:
    """Open notebooks/`name` and wait until its kernel is connected and idle."""
    page.goto(lab.url(f"lab/tree/{name}"))
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    wait_for_idle_kernel(page)


def wait_for_idle_kernel(page, timeout_ms: float | None = None) -> None:
    page.locator(KERNEL_STATUS, has_text=re.compile(r"\| Idle$")).wait_for(timeout=timeout_ms)


def run_all(page, timeout_ms: float) -> None:
    """Run ▸ Run All Cells, as a student clicks it; returns when every cell has run and the kernel
    is idle, or as soon as a cell shows a red box."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    wait_until_run(page, timeout_ms)


def wait_until_run(page, timeout_ms: float) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(ALL_RUN_OR_RED, timeout=timeout_ms, polling=250)
    except PlaywrightTimeout:
        raise TimeoutError(f"the cells did not all run within {timeout_ms / 1000:.0f} s: prompts {prompts(page)}, "
                           f"kernel {page.locator(KERNEL_STATUS).inner_text()!r}") from None
    if not red_boxes(page):
        wait_for_idle_kernel(page, timeout_ms)


def red_boxes(scope) -> list[str]:
    """The text of every error or stderr output in `scope` (a page or a locator)."""
    boxes = scope.locator(RED_BOX)
    return [boxes.nth(k).inner_text() for k in range(boxes.count())]


def prompts(page) -> list[str]:
    """Every code cell's prompt: "[3]:" (has run), "[*]:" (running or queued), "[ ]:" (not run)."""
    return [p.strip() for p in page.locator(PROMPT).all_inner_texts()]


def unrun_cells(page) -> list[str]:
    """The prompts of code cells that show no execution count."""
    return [p for p in prompts(page) if not RUN_PROMPT.match(p)]
