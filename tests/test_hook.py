"""The libvirt QEMU hook, run as libvirt runs it: HOOK GUEST OP SUB-OP EXTRA, XML on stdin."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.svc_daemon import RunningDaemon, make_host, wait_for

REPO = Path(__file__).resolve().parent.parent
HOOK = REPO / "etc/libvirt/hooks/qemu.d/ksmtuned-py"
# A domain definition bigger than a pipe buffer: libvirt writes it all to stdin.
DOMAIN_XML = "<domain type='kvm'><name>guest1</name>" + "<!-- pad -->" * 10000 + "</domain>\n"
FAST = 1.0  # seconds a hook call may take, at most


def wrapper(tmp_path: Path, host, body: str = "") -> Path:
    """A stand-in for /usr/bin/ksmtuned-py that targets the fake host and records each run."""
    script = tmp_path / "ksmtuned-py"
    script.write_text(
        "#!/bin/sh\n"
        f"echo $$ >> {tmp_path}/started\n"
        f"{body}"
        f"{' '.join(host.cli())} \"$@\"\n"
        f"echo $? >> {tmp_path}/exits\n"
    )
    script.chmod(0o755)
    return script


def run_hook(op: str, script: Path | str, sub: str = "begin",
             config: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """The hook as libvirt runs it; ``config`` stands for /etc/ksmtuned.conf (KSMTUNED_PY_CONFIG)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "KSMTUNED_PY": str(script)}
    if config is not None:
        env["KSMTUNED_PY_CONFIG"] = str(config)
    t0 = time.monotonic()
    # capture_output: run() returns only when every holder of stdout/stderr has
    # closed them, so a background child still attached to them would show here.
    got = subprocess.run([str(HOOK), "guest1", op, sub, "-"], input=DOMAIN_XML, text=True,
                         capture_output=True, env=env, timeout=30)
    return got, time.monotonic() - t0


def exits(tmp_path: Path) -> list[int]:
    path = tmp_path / "exits"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_hook_is_executable_shell():
    assert os.access(HOOK, os.X_OK)
    assert subprocess.run(["sh", "-n", str(HOOK)]).returncode == 0


@pytest.mark.parametrize("op", ["started", "stopped"])
def test_started_and_stopped_retune_the_running_daemon(tmp_path: Path, op: str):
    """The config names PIDFILE plainly: the hook signals the daemon itself, without Python."""
    host = make_host(tmp_path)
    script = wrapper(tmp_path, host)
    with RunningDaemon(host) as daemon:
        assert daemon.cycles() == 0 and host.knob("run") == "0"
        got, took = run_hook(op, script, config=host.config)
        assert (got.returncode, got.stdout, got.stderr) == (0, "", "")
        assert took < FAST
        # free 100000 kB < thres 419430 kB: the retune boosts and starts KSM.
        wait_for(lambda: (host.knob("run"), host.knob("pages_to_scan"), host.knob("sleep_millisecs")) == (
            "1", "300", "80"), what="the retune's writes")
        assert daemon.cycles() == 1
        time.sleep(0.3)
        assert not (tmp_path / "started").exists()  # no `ksmtuned-py retune` was needed


@pytest.mark.parametrize("line", [
    "PIDFILE=\\{pidfile}",  # the same path to ksmtuned-py's parser, but not a plain one
    "PIDFILE='{directory}'/ksmtune.pid",  # quoting a part of it
])
def test_a_pidfile_the_hook_cannot_read_plainly_goes_through_ksmtuned_py_retune(tmp_path: Path, line: str):
    host = make_host(tmp_path)
    host.config.write_text(host.config.read_text().replace(f"PIDFILE={host.pidfile}", line.format(
        pidfile=host.pidfile, directory=host.pidfile.parent)))
    script = wrapper(tmp_path, host)
    with RunningDaemon(host) as daemon:
        got, took = run_hook("started", script, config=host.config)
        assert (got.returncode, got.stdout, got.stderr, took < FAST) == (0, "", "", True)
        wait_for(lambda: daemon.cycles() == 1, what="the retune's cycle")
        wait_for(lambda: exits(tmp_path) == [0], what="`ksmtuned-py retune` to exit 0")


def test_a_stale_pidfile_naming_another_process_is_not_signalled(tmp_path: Path):
    """A pid left by a killed daemon may belong to any process now: SIGUSR1 would kill it."""
    host = make_host(tmp_path)
    script = wrapper(tmp_path, host)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        host.pidfile.write_text(f"{stranger.pid}\n")
        got, took = run_hook("started", script, config=host.config)
        assert (got.returncode, took < FAST) == (0, True)
        wait_for(lambda: exits(tmp_path) != [], what="the background retune to finish")
        assert exits(tmp_path) == [1]  # ksmtuned-py retune: stale (not locked)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_other_operations_do_nothing(tmp_path: Path):
    host = make_host(tmp_path)
    script = wrapper(tmp_path, host)
    with RunningDaemon(host) as daemon:
        for op in ("prepare", "start", "release", "migrate", "restore", "reconnect", "attach"):
            got, took = run_hook(op, script)
            assert got.returncode == 0 and took < FAST, op
        time.sleep(1.0)
        assert not (tmp_path / "started").exists()
        assert daemon.cycles() == 0


def test_no_daemon_exits_0_fast_and_changes_nothing(tmp_path: Path):
    host = make_host(tmp_path)
    script = wrapper(tmp_path, host)
    before = {p.name: p.read_text() for p in host.ksm.iterdir()}
    got, took = run_hook("started", script, config=host.config)
    assert (got.returncode, got.stdout, got.stderr) == (0, "", "")
    assert took < FAST
    # The background `ksmtuned-py retune` finds no daemon and fails quietly.
    wait_for(lambda: exits(tmp_path) != [], what="the background retune to finish")
    assert exits(tmp_path) == [1]
    assert {p.name: p.read_text() for p in host.ksm.iterdir()} == before
    assert not host.pidfile.exists()


def test_never_blocks_the_guest_start_even_when_the_retune_hangs(tmp_path: Path):
    host = make_host(tmp_path)
    script = wrapper(tmp_path, host, body="sleep 30\n")
    got, took = run_hook("started", script)
    try:
        assert got.returncode == 0
        assert took < FAST
        wait_for(lambda: (tmp_path / "started").exists(), what="the background retune to start")
    finally:
        for pid in (tmp_path / "started").read_text().split() if (tmp_path / "started").exists() else []:
            try:
                os.killpg(int(pid), signal.SIGKILL)  # setsid made it a process group leader
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("what", ["config", "pidfile"])
def test_a_fifo_where_a_file_belongs_never_blocks_the_hook(tmp_path: Path, what: str):
    host = make_host(tmp_path)
    script = wrapper(tmp_path, host, body="exit 1\n")  # the fallback: not under test here
    fifo = host.config if what == "config" else host.pidfile
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    got, took = run_hook("started", script, config=host.config)
    assert (got.returncode, got.stdout, got.stderr) == (0, "", "")
    assert took < FAST


def test_missing_program_exits_0(tmp_path: Path):
    got, took = run_hook("started", tmp_path / "not-installed")
    assert (got.returncode, got.stderr) == (0, "") and took < FAST
