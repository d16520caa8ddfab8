"""Where operational logs go: the journal only when stderr really is a journal stream."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = (
    "import logging; from ksmtuned_py import service; service.configure_logging(); "
    "print(type(logging.getLogger().handlers[0]).__name__)"
)


def handler_with(env_stream: str | None, stderr_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    if env_stream is not None:
        env["JOURNAL_STREAM"] = env_stream
    with open(stderr_path, "w") as err:
        got = subprocess.run([sys.executable, "-c", PROBE], stdout=subprocess.PIPE, stderr=err,
                             text=True, env=env, timeout=30, check=True)
    return got.stdout.strip()


def test_journal_when_stderr_is_the_announced_stream(tmp_path: Path):
    stderr_path = tmp_path / "stderr"
    stderr_path.touch()
    st = stderr_path.stat()
    # JOURNAL_STREAM names stderr's device:inode, as systemd sets it for a service.
    assert handler_with(f"{st.st_dev}:{st.st_ino}", stderr_path) == "JournalHandler"


def test_stderr_when_the_variable_was_only_inherited(tmp_path: Path):
    stderr_path = tmp_path / "stderr"
    # A shell started from a service inherits JOURNAL_STREAM, but its stderr is a terminal/file.
    assert handler_with("12:345", stderr_path) == "StreamHandler"
    assert handler_with("garbage", stderr_path) == "StreamHandler"
    assert handler_with(None, stderr_path) == "StreamHandler"
