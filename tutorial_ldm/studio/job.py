"""One background job at a time, with one lock: start, stop, wait, busy.

Why a thread: while the kernel runs a click handler it reads no further messages, so a second
click would queue up and start a second run as soon as the first ends, and Stop could not be
clicked at all. In a thread the kernel stays free: progress and preview render live, a click
during a run is refused, Stop is heard.

Stop is cooperative: the job looks at `stopping` between sampler steps. When the interpreter
exits mid-run (a script that clicks Generate and ends without `wait()`), every running job is
stopped and joined before Python tears itself down; a thread still inside torch at that moment
would abort the process ("terminate called without an active exception").
"""

from __future__ import annotations

import atexit
import threading
import weakref

_RUNNING: weakref.WeakSet = weakref.WeakSet()  # jobs to stop and join when the interpreter exits


class Job:
    """Runs `fn(*args)` in a daemon thread; `on_busy(True/False)` when a run starts and ends."""

    def __init__(self, on_busy=None):
        self._lock = threading.Lock()  # guards _running and _thread, nothing else
        self._running = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._on_busy = on_busy or (lambda busy: None)

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._running

    @property
    def stopping(self) -> bool:
        """True once `stop()` was called during the current run."""
        return self._stop.is_set()

    def start(self, fn, *args) -> bool:
        """Run fn(*args) in the background; False (and nothing starts) if a run is going on."""
        with self._lock:
            if self._running:
                return False
            self._running = True
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._on_busy(True)
        _RUNNING.add(self)
        self._thread.start()
        return True

    def _run(self, fn, args) -> None:
        try:
            fn(*args)
        finally:
            self._on_busy(False)  # before `busy` turns False: no new run starts in between
            with self._lock:
                self._running = False

    def stop(self) -> None:
        """Ask the running job to end at its next check of `stopping`."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current run ends; TimeoutError if it is still running after `timeout` s."""
        with self._lock:
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the studio is still busy after {timeout} s")


@atexit.register
def _stop_all() -> None:
    for job in list(_RUNNING):
        job.stop()
        job.wait()
