"""The command line: exact output and exit status, as a user sees them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from ksmtuned_py import __version__
from ksmtuned_py.ksmctl import start as ksm_start_fn
from tests.guests import stand_in_guests
from tests.test_daemon import KSM_FILES, _cycle_done, daemons, host, ksmtuned_py, wait_for  # noqa: F401

PAGE = os.sysconf("SC_PAGE_SIZE")


def cli(host, *args, env=None, root=True):
    base = [*ksmtuned_py()]
    if root:
        base += ["--root", str(host.root)]
    base += ["--config", str(host.conf)]
    e = {k: v for k, v in os.environ.items() if not k.startswith(("KSM_", "DEBUG", "LOGFILE", "PIDFILE"))}
    e.update(env or {})
    return subprocess.run([*base, *args], capture_output=True, text=True, env=e, timeout=60)


def status_fields(text: str) -> dict[str, str]:
    """``status``'s output as label -> text, the wrapped lines joined again."""
    fields: dict[str, str] = {}
    label = None
    for line in text.splitlines():
        if line[:12].strip():
            label, _, rest = line.partition(":")
            fields[label] = line[12:]
        else:
            fields[label] += " " + line[12:]
    return fields


def test_version(host):
    r = cli(host, "--version")
    assert (r.returncode, r.stdout) == (0, f"ksmtuned-py, version {__version__}\n")


# --- global options after the command ------------------------------------------------------------


def test_global_options_after_the_command(host, tmp_path):
    host.conf.write_text("KSM_NPAGES_MAX=2000\n")
    r = cli(host, "check-config", "--config", str(host.conf), root=False)
    assert r.returncode == 0, r.stderr
    assert f"KSM_NPAGES_MAX=2000                      # {host.conf}:1" in r.stdout.splitlines()
    # only after the command, none before
    r = subprocess.run([*ksmtuned_py(), "status", "--root", str(host.root), "--config", str(host.conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("KSM:        stopped (run=0), pages_to_scan 100, sleep_millisecs 20")
    # after the command wins over before it
    other = tmp_path / "other.conf"
    other.write_text("KSM_NPAGES_MAX=777\n")
    r = cli(host, "check-config", "--config", str(other))
    assert f"KSM_NPAGES_MAX=777                       # {other}:1" in r.stdout.splitlines()
    (host.base / "empty").mkdir()
    r = cli(host, "status", "--root", str(host.base / "empty"))
    assert (r.returncode, r.stderr) == (69, (
        f"ksmtuned-py: the kernel has no KSM (CONFIG_KSM): {host.base}/empty/sys/kernel/mm/ksm does not exist\n"))
    # nested commands too
    r = subprocess.run([*ksmtuned_py(), "ksm", "stop", "--root", str(host.root)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert host.knob("run") == "0\n"
    r = subprocess.run([*ksmtuned_py(), "adjust", "--apply", "--config", str(host.conf), "--root", str(host.root)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert host.knob("pages_to_scan") == "300\n"


def test_install_refuses_root_after_it(host):
    # install ignores --root; accepting it after the command would install to / by surprise
    r = subprocess.run([*ksmtuned_py(), "install", "--root", str(host.root)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert "No such option '--root'" in r.stderr


def test_the_daemon_takes_global_options_after_run(host):
    p = subprocess.Popen([*ksmtuned_py(), "run", "--root", str(host.root), "--config", str(host.conf)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: host.pidfile.exists() and host.pidfile.read_text().strip() == str(p.pid))
        wait_for(lambda: any(x.startswith("thres ") for x in host.debug_lines()))
    finally:
        p.terminate()
        p.communicate(timeout=10)
    assert p.returncode == 0
    assert "total 1000000" in host.debug_lines()


# --- check-config -----------------------------------------------------------------------------


def test_check_config_prints_every_value_and_its_origin(host):
    host.conf.write_text("KSM_NPAGES_MAX=2000  # more\nKSM_NPAGE_MIN=1\nLOGFILE='/var/log/ksm tuned'\n")
    r = cli(host, "check-config", env={"KSM_SLEEP_MSEC": "20", "PIDFILE": "/run/k.pid"})
    assert r.returncode == 0
    c = str(host.conf)
    assert r.stdout.splitlines() == [
        f"# the settings in effect with {c}",
        f"# compatibility: upstream (KSM_COMPAT=auto, and this is not a Proxmox VE host (no Proxmox VE "
        f"package in {host.root}/var/lib/dpkg/status, no {host.root}/etc/pve))",
        "KSM_MONITOR_INTERVAL=60                  # default",
        "KSM_SLEEP_MSEC=20                        # environment",
        "KSM_NPAGES_BOOST=300                     # default",
        "KSM_NPAGES_DECAY=-50                     # default",
        "KSM_NPAGES_MIN=64                        # default",
        f"KSM_NPAGES_MAX=2000                      # {c}:1",
        "KSM_THRES_COEF=20                        # default",
        "KSM_THRES_CONST=2048                     # default",
        "PIDFILE=/run/k.pid                       # environment",
        f"LOGFILE='/var/log/ksm tuned'             # {c}:3",
        "DEBUG=''                                 # default",
        "KSM_PROCESS_REGEX='^qemu(-(kvm|system-.+)|:.{1,11})$' # default",
        "KSM_MEMORY_METRIC=rss                    # default",
        "KSM_FREE_METRIC=classic                  # default",
        "KSM_MAX_KERNEL_PAGES=''                  # default",
        "KSM_METRICS_TEXTFILE=''                  # default",
        "KSM_POLICY=ksmtuned                      # default",
        "KSM_MAX_CPU=20                           # default",
        "KSM_COMPAT=auto                          # default",
        "KSM_PS_METRIC=''                         # default",
    ]
    assert r.stderr == f"warning: {c}:2: unknown key KSM_NPAGE_MIN, ignored (did you mean KSM_NPAGES_MIN?)\n"


def test_check_config_errors_are_one_line_with_exit_78(host):
    host.conf.write_text("KSM_NPAGES_MAX=`reboot`\n")
    r = cli(host, "check-config")
    assert (r.returncode, r.stdout) == (78, "")
    assert r.stderr == (
        f"ksmtuned-py: {host.conf}:1: command substitution with '`' is not allowed; "
        "expected a literal value (the file is parsed, never executed)\n"
    )
    host.conf.write_text("KSM_MONITOR_INTERVAL=never\n")
    r = cli(host, "status")
    assert r.returncode == 78
    assert r.stderr == (
        f"ksmtuned-py: {host.conf}:1: KSM_MONITOR_INTERVAL: invalid value 'never'; "
        "expected a positive number of seconds\n"
    )


def test_check_config_without_a_file_warns_and_exits_66(host):
    """A mistyped --config: the values without it are printed, marked as a warning, exit status 66."""
    host.conf.unlink()
    r = cli(host, "check-config")
    assert r.returncode == 66  # EX_NOINPUT
    assert r.stderr == (f"warning: {host.conf} does not exist; using the environment and the defaults "
                        "(as ksmtuned does)\n")
    assert r.stdout.splitlines()[0] == f"# {host.conf} does not exist: the settings in effect without it"
    assert r.stdout.splitlines()[2] == "KSM_MONITOR_INTERVAL=60                  # default"


def test_check_config_says_what_npages_min_above_max_does(host):
    host.conf.write_text("KSM_NPAGES_MAX=100\nKSM_NPAGES_MIN=2000\n")
    r = cli(host, "check-config")
    assert r.returncode == 0
    assert r.stderr == (
        f"warning: {host.conf}:2: KSM_NPAGES_MIN=2000 is above KSM_NPAGES_MAX=100, so pages_to_scan is "
        "never between them: as ksmtuned does, a cycle that starts KSM writes 2000 when npages plus the "
        "step (KSM_NPAGES_BOOST or KSM_NPAGES_DECAY) is below 2000, else 100\n")


# --- status -------------------------------------------------------------------------------------


def test_status_text(host):
    """Sizes in human units (the reason keeps the rule's kB), lines of at most 79 columns."""
    r = cli(host, "status")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("compat:")[0] == (
        "KSM:        stopped (run=0), pages_to_scan 100, sleep_millisecs 20,\n"
        "            advisor none\n"
        "counters:   pages_shared 0, pages_sharing 2560, pages_unshared 0,\n"
        "            pages_volatile 0, full_scans 0, general_profit 10000000\n"
        f"saved:      10.0 MiB (pages_sharing 2560 x {PAGE} B); general_profit 9.5 MiB\n"
        "memory:     total 976.6 MiB, free 97.7 MiB (classic),\n"
        "            committed 0 B (rss, 0 guests), thres 195.3 MiB\n"
        "unmerge:    merged 10.0 MiB needed back if the guests wrote it all,\n"
        "            MemAvailable + SwapFree 97.7 MiB: fits\n"
        "next cycle: start ksm (boost): pages_to_scan 300, sleep_millisecs 167, because\n"
        "            free 100000 kB <= thres 200000 kB; free 100000 kB <\n"
        "            thres 200000 kB, so boost pages_to_scan from 0 to 300\n"
        "npages:     0 now, from a fresh start (no daemon running)\n"
    )
    assert r.stderr == ""
    # the lines with the test's paths wrap by their length
    fields = status_fields(r.stdout)
    assert fields["compat"] == (f"upstream (KSM_COMPAT=auto, and this is not a Proxmox VE host (no Proxmox VE "
                                f"package in {host.root}/var/lib/dpkg/status, no {host.root}/etc/pve))")
    assert fields["daemon"] == f"not running ({host.pidfile} does not exist)"
    assert list(fields)[-2:] == ["compat", "daemon"]
    assert all(len(line) <= 79 or " " not in line.strip() for line in r.stdout.splitlines())


def test_status_json_with_a_guest_and_a_running_daemon(host, daemons):
    host.set_meminfo(total=1000000, free=900000)
    d = daemons(host).wait_ready()
    with stand_in_guests({"comm": "qemu:web", "resident_kib": 2048}) as (g,):
        host.link(g.pid)
        r = cli(host, "status", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["ksm"] == {"run": 0, "pages_to_scan": 100, "sleep_millisecs": 20, "advisor_mode": "none",
                        "pages_shared": 0, "pages_sharing": 2560, "pages_unshared": 0, "pages_volatile": 0,
                        "full_scans": 0, "general_profit": 10000000}
    assert (s["saved_bytes"], s["page_size"]) == (2560 * PAGE, PAGE)
    (guest,) = s["guests"]
    assert (guest["pid"], guest["comm"]) == (g.pid, "qemu:web") and guest["committed_kb"] >= 2048
    assert s["memory"] == {"total_kb": 1000000, "free_kb": 900000, "free_metric": "classic",
                           "committed_kb": guest["committed_kb"], "memory_metric": "rss", "thres_kb": 200000}
    assert s["next"]["sleep_ms"] == 167 and s["next"]["advisor_active"] is False
    # the daemon has not decided yet: its npages is 0, whatever pages_to_scan says
    assert s["next"]["action"] == "stop" and s["next"]["npages"] == 0
    assert (s["next"]["from_npages"], s["next"]["npages_source"]) == (0, "daemon")
    assert s["next"]["reason"] == (
        f"committed + thres = {guest['committed_kb'] + 200000} kB < total 1000000 kB "
        "and free 900000 kB > thres 200000 kB"
    )
    assert s["daemon"] == {"running": True, "pid": d.pid, "pidfile": str(host.pidfile),
                           "state": str(host.base / "ksmtune.state"), "config": str(host.conf),
                           "last_decision": None}
    assert d.finish() == 0


def test_status_and_adjust_start_from_the_running_daemons_npages(host, daemons):
    state = host.base / "ksmtune.state"  # PIDFILE ksmtune.pid -> ksmtune.state
    d = daemons(host).wait_ready()
    wait_for(state.exists)
    assert state.stat().st_mode & 0o777 == 0o644
    published = json.loads(state.read_text())
    assert (published["pid"], published["npages"], published["last_decision"]) == (d.pid, 0, None)
    assert published["tuning"] == {"total": 1000000, "sleep": 167, "thres": 200000, "thres_text": "200000"}
    assert status_fields(cli(host, "status").stdout)["daemon"] == f"running (pid {d.pid}), no cycle yet"
    d.kick()
    d.kick()  # boost twice: the daemon's npages is 600
    (host.ksm / "pages_to_scan").write_text("5\n")  # someone else changed the knob
    published = json.loads(state.read_text())
    assert published["npages"] == 600
    assert published["last_decision"]["action"] == "start" and published["last_decision"]["npages"] == 600
    # the config on disk changed but was not reloaded: the daemon's settings still apply
    host.write_config("KSM_NPAGES_MAX=700\n")
    r = cli(host, "adjust", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-2:] == [
        "KSMCTL start 900 167",
        f"dry run: nothing written (npages started from 600, taken from the running daemon (pid {d.pid}, {state}))",
    ]
    r = cli(host, "status")
    fields = status_fields(r.stdout)
    assert fields["npages"] == f"600 now, from the running daemon (pid {d.pid}, {state})"
    assert fields["next cycle"].endswith("so boost pages_to_scan from 600 to 900")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(published["last_decision"]["time"]))
    assert fields["daemon"] == f"running (pid {d.pid}), last cycle at {when}: start ksm (boost, pages_to_scan 600)"
    # a reload restarts npages at 0 with the new settings, and the state says so
    d.kick(signal.SIGHUP)
    wait_for(lambda: json.loads(state.read_text())["params"]["npages_max"] == 700)
    assert json.loads(state.read_text())["npages"] == 300
    assert "KSMCTL start 600 167" in cli(host, "adjust").stdout
    # a status on another root does not use this daemon's state
    other = host.base / "other"
    (other / "proc").mkdir(parents=True)
    (other / "sys/kernel/mm/ksm").mkdir(parents=True)
    for name, value in KSM_FILES.items():
        (other / "sys/kernel/mm/ksm" / name).write_text(value + "\n")
    (other / "proc/meminfo").write_text((host.root / "proc/meminfo").read_text())
    r = cli(host, "status", "--root", str(other))
    assert status_fields(r.stdout)["npages"] == (
        f"0 now, from a fresh start (the daemon runs on root {host.root}, not {other})"), r.stdout
    assert d.finish() == 0
    assert not state.exists() and not host.pidfile.exists()
    assert list(host.base.glob(".ksmtune.state.*")) == []
    assert "taken from a fresh start (no daemon running)" in cli(host, "adjust").stdout


def test_adjust_apply_refuses_beside_a_running_daemon(host, daemons):
    """Two tuners never at once: --apply would be undone at the daemon's next cycle."""
    d = daemons(host).wait_ready()
    (host.ksm / "pages_to_scan").write_text("5\n")
    r = cli(host, "adjust", "--apply")
    assert r.returncode == 1
    assert r.stderr == (f"ksmtuned-py: a ksmtuned-py daemon tunes {host.ksm} and would undo this at its next "
                        "cycle; `ksmtuned-py retune` makes it decide now (or stop it first)\n")
    assert host.knob("pages_to_scan") == "5\n"  # nothing written
    assert cli(host, "adjust", "--dry-run").returncode == 0  # a prediction is fine
    assert d.finish() == 0
    assert cli(host, "adjust", "--apply").returncode == 0
    assert host.knob("pages_to_scan") == "300\n"


def test_status_without_ksm(host):
    (host.base / "empty").mkdir()
    r = cli(host, "--root", str(host.base / "empty"), "status", root=False)
    assert r.returncode == 69
    assert r.stderr == (
        f"ksmtuned-py: the kernel has no KSM (CONFIG_KSM): {host.base}/empty/sys/kernel/mm/ksm does not exist\n"
    )


# --- adjust ---------------------------------------------------------------------------------------


def test_adjust_dry_run_writes_nothing(host):
    before = {n: host.knob(n) for n in KSM_FILES}
    r = cli(host, "adjust", "--dry-run")
    assert r.returncode == 0
    assert r.stdout.splitlines() == [
        "total 1000000", "sleep 167", "thres 200000", "committed 0 free 100000",
        "200000 > 1000000, start ksm", "100000 < 200000, boost", "KSMCTL start 300 167",
        "dry run: nothing written (npages started from 0, taken from a fresh start (no daemon running))",
    ]
    assert {n: host.knob(n) for n in KSM_FILES} == before
    assert cli(host, "adjust").stdout == r.stdout  # dry run is the default


def test_adjust_apply_writes_and_reports_failures(host):
    r = cli(host, "adjust", "--apply")
    assert r.returncode == 0
    assert r.stdout.splitlines()[-1] == "wrote pages_to_scan=300, sleep_millisecs=167, run=1"
    assert (host.knob("pages_to_scan"), host.knob("sleep_millisecs"), host.knob("run")) == (
        "300\n", "167\n", "1\n")
    host.set_meminfo(total=1000000, free=900000)
    r = cli(host, "adjust", "--apply")
    assert r.stdout.splitlines()[-2:] == ["200000 < 1000000 and free > 200000, stop ksm", "wrote run=0"]
    assert host.knob("run") == "0\n"
    (host.ksm / "run").unlink()
    (host.ksm / "run").mkdir()
    r = cli(host, "adjust", "--apply")
    assert r.returncode == 1
    assert r.stdout.splitlines()[-1] == "tried to write run=0"
    assert r.stderr.splitlines() == [
        f"ksmtuned-py: ERROR: cannot write 0 to {host.ksm}/run: EISDIR (Is a directory)",
        "ksmtuned-py: some KSM knobs could not be written (see above)",
    ]


def test_adjust_prints_and_writes_signed_values_as_written(host):
    host.write_config("KSM_NPAGES_MIN=+500\nKSM_THRES_COEF=0\nKSM_THRES_CONST=+300000\n")
    r = cli(host, "adjust", "--apply")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "total 1000000", "sleep 167", "thres +300000", "committed 0 free 100000",
        "300000 > 1000000, start ksm", "100000 < +300000, boost", "KSMCTL start +500 167",
        "wrote pages_to_scan=+500, sleep_millisecs=167, run=1",
    ]
    assert host.knob("pages_to_scan") == "+500\n"


# --- ksm start|stop -------------------------------------------------------------------------------


def test_ksm_start_and_stop(host):
    r = cli(host, "ksm", "start")
    assert (r.returncode, r.stdout, host.knob("run")) == (0, "wrote run=1\n", "1\n")
    r = cli(host, "ksm", "stop")
    assert (r.returncode, r.stdout, host.knob("run")) == (0, "wrote run=0\n", "0\n")


def test_ksm_start_sets_max_kernel_pages_on_old_kernels(host, tmp_path):
    (host.ksm / "max_kernel_pages").write_text("2000\n")
    half = 1000000 * 1024 // PAGE // 2
    if not any(os.path.exists(p) for p in ("/etc/default/ksm", "/etc/sysconfig/ksm")):
        r = cli(host, "ksm", "start")
        assert r.stdout == f"wrote max_kernel_pages={half}, run=1\n"
        assert host.knob("max_kernel_pages") == f"{half}\n"
        r = cli(host, "ksm", "start", env={"KSM_MAX_KERNEL_PAGES": "777"})
        assert r.stdout == "wrote max_kernel_pages=777, run=1\n"
    defaults = tmp_path / "ksm"
    defaults.write_text("# comment\nKSM_MAX_KERNEL_PAGES=0\n")
    assert ksm_start_fn(str(host.root), paths=[str(defaults)], environ={"KSM_MAX_KERNEL_PAGES": "9"}) == [
        "wrote max_kernel_pages=0, run=1"]
    assert host.knob("max_kernel_pages") == "0\n"
    defaults.write_text("KSM_MAX_KERNEL_PAGES=$(id)\n")
    with pytest.raises(Exception) as e:
        ksm_start_fn(str(host.root), paths=[str(defaults)], environ={})
    assert str(e.value) == (
        f"{defaults}:1: command substitution '$(' is not allowed; "
        "expected a literal value (the file is parsed, never executed)"
    )


def test_ksm_without_ksm_or_with_a_failing_write(host):
    (host.base / "nothing").mkdir()
    r = cli(host, "--root", str(host.base / "nothing"), "ksm", "stop", root=False)
    assert r.returncode == 69 and "Traceback" not in r.stderr
    (host.ksm / "run").unlink()
    r = cli(host, "ksm", "start")
    assert r.returncode == 1
    assert r.stderr == (
        f"ksmtuned-py: cannot write 1 to {host.ksm}/run: ENOENT (No such file or directory)\n"
    )


# --- retune ---------------------------------------------------------------------------------------


def test_retune_without_a_daemon(host):
    r = cli(host, "retune")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == f"ksmtuned-py: no ksmtuned-py daemon is running: {host.pidfile} does not exist\n"
    host.pidfile.write_text("12345\n")  # left behind by a crash: nobody holds the lock
    r = cli(host, "retune")
    assert r.returncode == 1
    assert r.stderr == (
        f"ksmtuned-py: no ksmtuned-py daemon is running: {host.pidfile} is stale (not locked)\n"
    )


def test_retune_signals_the_running_daemon(host, daemons):
    d = daemons(host).wait_ready()
    r = cli(host, "retune")
    assert (r.returncode, r.stdout) == (0, f"asked ksmtuned-py (pid {d.pid}) to retune\n")
    wait_for(lambda: _cycle_done(host.debug_lines()))
    assert host.debug_lines()[-1] == "KSMCTL start 300 167"
    assert d.finish() == 0


def test_reload_signals_the_running_daemon_and_only_it(host, daemons):
    r = cli(host, "reload")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == f"ksmtuned-py: no ksmtuned-py daemon is running: {host.pidfile} does not exist\n"
    d = daemons(host).wait_ready()
    r = cli(host, "reload")
    assert (r.returncode, r.stdout) == (0, f"asked ksmtuned-py (pid {d.pid}) to reload\n")
    # SIGHUP: the start lines again (the config re-read), then the reload's cycle
    wait_for(lambda: _cycle_done(host.debug_lines()))
    assert host.debug_lines()[3:6] == ["total 1000000", "sleep 167", "thres 200000"]
    assert d.finish() == 0


def test_no_command_runs_the_daemon(host):
    proc = subprocess.Popen([*ksmtuned_py(), "--root", str(host.root), "--config", str(host.conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: host.pidfile.exists())
        os.kill(proc.pid, signal.SIGUSR1)
        wait_for(lambda: host.knob("run") == "1\n")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "Traceback" not in err
