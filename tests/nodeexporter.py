"""Debian's real prometheus-node-exporter in tests: fetched into the cache, run on a free local port."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests import debpkg, proctools

PACKAGE = "prometheus-node-exporter"


def binary() -> Path:
    """The unpacked node_exporter binary; skips the test with the reason when apt cannot fetch it."""
    return debpkg.file_or_skip(PACKAGE, "usr/bin/prometheus-node-exporter")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    """One GET of /metrics; OSError while nothing answers."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


@dataclass
class Exporter:
    proc: subprocess.Popen
    port: int
    first: str  # the scrape that showed it was up

    def scrape(self) -> str:
        return scrape(self.port)


@contextlib.contextmanager
def running(binary: Path, *args: str, log: Path | None = None, timeout: float = 20.0) -> Iterator[Exporter]:
    """node_exporter ARGS on a free local port, yielded once /metrics answers; stopped and reaped on exit.

    Its output goes to ``log`` (a temporary file when None); the tail is in the error when it never answers.
    """
    port = free_port()
    out = open(log, "w+b") if log else tempfile.TemporaryFile()
    proc = subprocess.Popen([str(binary), *args, f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                first = scrape(port)
                break
            except OSError:  # URLError and refused/reset connections
                if proc.poll() is not None or time.monotonic() > deadline:
                    out.seek(0)
                    raise AssertionError(
                        "node_exporter did not serve /metrics: " + out.read().decode(errors="replace")[-2000:]
                    ) from None
                time.sleep(0.1)
        yield Exporter(proc, port, first)
    finally:
        proctools.stop(proc, timeout=10)
        out.close()
