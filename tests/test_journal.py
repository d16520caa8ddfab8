"""The daemon's own sd_notify and journald native protocol, and its start without click."""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys

import pytest

from ksmtuned_py import journal
from ksmtuned_py.entry import daemon_arguments


def parse_native(data: bytes) -> dict[str, str]:
    """journald's native protocol, as journald reads it."""
    fields, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:
            key, size = line, struct.unpack("<Q", data[nl + 1:nl + 9])[0]
            value = data[nl + 9:nl + 9 + size]
            assert data[nl + 9 + size:nl + 10 + size] == b"\n"
            i = nl + 10 + size
        fields[key.decode()] = value.decode()
    return fields


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "journal.socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    yield path, s
    s.close()


def test_a_record_with_its_fields_reaches_the_journal_socket(listener):
    path, sock = listener
    handler = journal.JournalHandler("ksmtuned-py", path)
    log = logging.getLogger("test.journal")
    log.addHandler(handler)
    try:
        log.warning("start ksm\nsecond line \udcff", extra={"KSM_DECISION": "start", "KSM_NPAGES": 300,
                                                           "KSM_LEVEL": None, "lower": "ignored"})
        fields = parse_native(sock.recv(65536))
    finally:
        log.removeHandler(handler)
        handler.close()
    assert fields["MESSAGE"] == "start ksm\nsecond line \\udcff"  # a newline: the length-prefixed form
    assert (fields["PRIORITY"], fields["SYSLOG_IDENTIFIER"], fields["LOGGER"]) == ("4", "ksmtuned-py", "test.journal")
    assert (fields["KSM_DECISION"], fields["KSM_NPAGES"]) == ("start", "300")
    assert "KSM_LEVEL" not in fields and "lower" not in fields
    assert fields["CODE_FUNC"] == "test_a_record_with_its_fields_reaches_the_journal_socket"


def test_priorities_are_syslogs():
    assert [journal.priority(level) for level in (50, 40, 30, 20, 10)] == [2, 3, 4, 6, 7]


def test_notify_sends_one_datagram(listener):
    path, sock = listener
    assert journal.notify("READY=1\nSTATUS=ok", path)
    assert sock.recv(1024) == b"READY=1\nSTATUS=ok"
    assert not journal.notify("READY=1", "")  # not under systemd
    assert not journal.notify("READY=1", path + ".gone")


@pytest.mark.parametrize("args, wanted", [
    ([], {"root": "/", "config_path": "/etc/ksmtuned.conf"}),
    (["run"], {"root": "/", "config_path": "/etc/ksmtuned.conf"}),
    (["--root", "/tmp", "run", "--config", "/c"], {"root": "/tmp", "config_path": "/c"}),
    (["run", "--root=/tmp", "--root", "/"], {"root": "/", "config_path": "/etc/ksmtuned.conf"}),
    (["status"], None), (["--help"], None), (["run", "--help"], None), (["--version"], None),
    (["run", "run"], None), (["--root"], None), (["--root", "/etc/passwd", "run"], None), (["--roots=/"], None),
])
def test_only_command_lines_that_start_the_daemon_skip_click(args, wanted):
    assert daemon_arguments(args) == wanted


def test_the_shell_completion_asking_never_starts_the_daemon():
    """Completing `ksmtuned-py <TAB>` runs the program with no arguments: click answers, no daemon starts.

    (Were the daemon started, the probe's stand-in for it says so and stops, instead of a real
    daemon tuning this machine's KSM.)
    """
    probe = ("import sys\nfrom ksmtuned_py import daemon, entry\n"
             "class NoDaemon:\n    def __init__(self, *a):\n        print('a daemon started'); raise SystemExit(9)\n"
             "daemon.Daemon = NoDaemon\nsys.argv = ['ksmtuned-py']\nentry.main()\n")
    got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COMP_WORDS": "ksmtuned-py ch", "COMP_CWORD": "1",
                              "_KSMTUNED_PY_COMPLETE": "bash_complete"})
    assert (got.returncode, got.stdout, got.stderr) == (0, "plain,check-config\n", "")


def test_the_daemon_starts_without_click_and_says_a_config_error_as_click_would(tmp_path):
    conf = tmp_path / "ksmtuned.conf"
    conf.write_text("KSM_NPAGES_MAX=$(reboot)\n")
    probe = ("import sys\nfrom ksmtuned_py import entry\nsys.argv = ['ksmtuned-py', '--config', sys.argv[1], 'run']\n"
             "try:\n    entry.main()\nexcept SystemExit as e:\n    print(e.code, 'click' in sys.modules)\n")
    got = subprocess.run([sys.executable, "-c", probe, str(conf)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "JOURNAL_STREAM": ""})
    assert got.stdout == "78 False\n"
    assert got.stderr == (f"ksmtuned-py: {conf}:1: command substitution '$(' is not allowed; expected a literal value "
                          "(the file is parsed, never executed)\n")
