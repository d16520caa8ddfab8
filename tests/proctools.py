"""Polling for a condition and stopping a child process: shared by the test helpers."""

from __future__ import annotations

import signal
import subprocess
import time


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition",
             error: type[Exception] = AssertionError):
    """Poll ``predicate`` until it returns a true value (returned); ``error`` after ``timeout``.

    Outside pytest (the namespace drivers) pass ``error=TimeoutError``.  A file the
    predicate reads that does not exist yet (a daemon's log before its first line, on a
    loaded machine) is the condition not met yet, not an error.
    """
    deadline = time.monotonic() + timeout
    missing = ""
    while True:
        try:
            value, missing = predicate(), ""
        except FileNotFoundError as exc:
            value, missing = None, f" ({exc.filename} never appeared)"
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout}s waiting for {what}{missing}")
        time.sleep(interval)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Send ``sig`` if it still runs, kill it after ``timeout``; always reaped. Its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
