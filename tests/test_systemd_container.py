"""The units under a real systemd: a Debian bookworm container booted with systemd-nspawn.

The root file system is debootstrapped once into the cache and reused; every
run boots an overlay of it (so runs never change the cache), with a scratch
directory of plain files bind-mounted over /sys/kernel/mm/ksm so the host's
real KSM is never touched.  Commands run inside with ``nsenter`` into the
container's PID 1.  The container is always powered off at the end, and the
overlay unmounted.

The project goes in as users install it, both ways, one after the other:
first the Debian packages scripts/build-packages made from this checkout
(``apt install ./ksmtuned-py_*.deb`` over Debian's own ksmtuned, whose
edited /etc/ksmtuned.conf must survive), then, once they are purged, wheels
built on the host (same Python 3.11 as bookworm's) in a venv with
``ksmtuned-py install``.  The container has no network: the Debian packages
the ones built here depend on are fetched on the host into the cache
(tests/debpkg.py) and handed to apt as files.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests import debbuild, debpkg
from tests.conftest import CACHE_DIR

SUITE = "bookworm"
INCLUDE = "systemd,dbus,python3,python3-venv"
CONTAINER_PYTHON = (3, 11)  # bookworm's python3
REPO = Path(__file__).resolve().parent.parent
VENV = "/opt/ksmtuned-py"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INITIAL_KNOBS = {"run": "0", "pages_to_scan": "100", "sleep_millisecs": "20", "pages_shared": "0",
                 "pages_sharing": "0", "pages_unshared": "0", "pages_volatile": "0",
                 "full_scans": "0", "general_profit": "0",
                 # As on kernels before 2.6.33: the oneshot sets it from /etc/default/ksm.
                 "max_kernel_pages": "0"}
SCRATCH_IN = "/mnt/ksm"  # where nspawn binds the scratch KSM files inside
# Debian packages the container lacks: what ours depend on (python3-click needs
# python3-colorama), and the reference.
DEPENDENCIES = ("python3-click", "python3-colorama", "python3-systemd")
REFERENCE = "ksmtuned"
EDITED_LINE = "KSM_NPAGES_MAX=1000  # the admin's, before ksmtuned-py\n"
DOMAIN_XML = "<domain type='kvm'><name>guest1</name></domain>\n"


class Unavailable(Exception):
    """The container cannot be built here; the message says why."""


# --- the cached root file system and wheels -----------------------------------------

def cached_rootfs(cache: Path = CACHE_DIR) -> Path:
    """The debootstrapped root file system, built once into the cache and reused.

    Built into a temporary directory next to the cache entry and renamed into
    place only when debootstrap succeeded, so a half-built tree is never reused;
    a lock file keeps two test runs from building it at once.
    """
    target = cache / f"rootfs-{SUITE}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".rootfs-{SUITE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "usr/lib/systemd/systemd").exists():
            return target
        for stale in cache.glob(f".rootfs-{SUITE}-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        building = Path(tempfile.mkdtemp(prefix=f".rootfs-{SUITE}-", dir=cache))
        try:
            got = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(building)],
                capture_output=True, text=True,
            )
            if got.returncode != 0:
                tail = (got.stderr.strip() or got.stdout.strip()).splitlines()[-1:]
                raise Unavailable(f"debootstrap {SUITE} failed: {' '.join(tail)}")
            shutil.rmtree(target, ignore_errors=True)
            os.rename(building, target)
        finally:
            if building.exists():
                shutil.rmtree(building, ignore_errors=True)
    return target


def build_wheels(into: Path, cache: Path = CACHE_DIR) -> None:
    """The project's wheel and its dependencies' (from a cached wheelhouse) in ``into``."""
    house = cache / f"wheelhouse-cp{CONTAINER_PYTHON[0]}{CONTAINER_PYTHON[1]}"
    house.mkdir(parents=True, exist_ok=True)
    into.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{house.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        got = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(into), str(REPO)],
            capture_output=True, text=True, timeout=600,
        )
        if got.returncode != 0:
            raise Unavailable("pip wheel of the project failed: " + got.stderr.strip()[-500:])
        got = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--find-links", str(house), "-w", str(house),
             *map(str, into.glob("ksmtuned_py-*.whl"))],
            capture_output=True, text=True, timeout=600,
        )
        if got.returncode != 0:
            raise Unavailable("pip wheel of the dependencies failed: " + got.stderr.strip()[-500:])
        for wheel in house.glob("*.whl"):
            if not wheel.name.startswith("ksmtuned_py-"):
                shutil.copy2(wheel, into)
        for stale in house.glob("ksmtuned_py-*.whl"):
            stale.unlink()


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to boot a systemd-nspawn container"
    for tool in ("debootstrap", "systemd-nspawn", "nsenter", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} not found (packages debootstrap, systemd-container, util-linux)"
    if sys.version_info[:2] != CONTAINER_PYTHON:
        return (f"host Python {sys.version_info[0]}.{sys.version_info[1]} cannot build wheels for "
                f"the container's Python {CONTAINER_PYTHON[0]}.{CONTAINER_PYTHON[1]}")
    return None


# --- one booted container -------------------------------------------------------------

class Container:
    """A booted container: ``sh()`` runs a command inside; ``close()`` powers it off."""

    def __init__(self, base: Path, rootfs: Path, wheels: Path, debs: Path):
        self.base = base
        self.lower = rootfs
        self.root = base / "merged"
        self.ksm = base / "ksm"
        self.wheels = wheels
        self.debs = debs
        self.name = f"ksmtuned-py-test-{os.getpid()}"
        self.nspawn: subprocess.Popen | None = None
        self.pid1: int | None = None
        self.overlay = False
        self.console = open(base / "console.log", "w")

    def ksm_knobs(self) -> dict[str, str]:
        return {p.name: p.read_text().strip() for p in self.ksm.iterdir()}

    def set_knobs(self, **values: object) -> None:
        for name, value in values.items():
            (self.ksm / name).write_text(f"{value}\n")

    def _root_fs(self) -> None:
        for d in ("upper", "work", "merged"):
            (self.base / d).mkdir()
        got = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={self.lower},upperdir={self.base / 'upper'},workdir={self.base / 'work'}",
             str(self.root)], capture_output=True, text=True)
        if got.returncode == 0:
            self.overlay = True
        else:  # no overlayfs here: a private copy instead
            self.root.rmdir()
            subprocess.run(["cp", "-a", "--reflink=auto", str(self.lower), str(self.root)], check=True)

    def boot(self) -> None:
        self._root_fs()
        self.ksm.mkdir()
        self.set_knobs(**INITIAL_KNOBS)
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.root), "-M", self.name, "--register=no",
             "--keep-unit", "--private-network", "-b",
             f"--bind={self.ksm}:{SCRATCH_IN}", f"--bind-ro={self.wheels}:/mnt/wheels",
             f"--bind-ro={self.debs}:/mnt/debs"],
            stdin=subprocess.DEVNULL, stdout=self.console, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while self.pid1 is None:
            if self.nspawn.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("container did not boot: " + self.console_text())
            self.pid1 = self._find_pid1()
            time.sleep(0.1)
        # nspawn mounts its read-only sysfs over /sys/kernel after applying
        # --bind, which would hide a scratch directory bound straight onto
        # /sys/kernel/mm/ksm: mount it there in the container's namespace now.
        got = subprocess.run(["nsenter", "-t", str(self.pid1), "-m", "--", "mount", "--bind",
                              SCRATCH_IN, "/sys/kernel/mm/ksm"], capture_output=True, text=True)
        assert got.returncode == 0, got.stderr
        (self.ksm / "scratch-marker").write_text("scratch\n")
        seen = self.sh("cat /sys/kernel/mm/ksm/scratch-marker /sys/kernel/mm/ksm/pages_to_scan",
                       check=False)
        assert seen.stdout == "scratch\n100\n", f"the scratch KSM is not in place: {seen}"
        (self.ksm / "scratch-marker").unlink()
        # Until the manager's socket is up, systemctl only fails to connect (it prints
        # nothing), and until systemd has made /run/systemd/system it says "offline".
        while True:
            got = self.sh("systemctl is-system-running --wait", check=False, timeout=90)
            state = got.stdout.strip()
            if state not in ("", "offline") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert state in ("running", "degraded"), f"{state!r} {got.stderr}\n" + self.sh(
            "systemctl --failed --no-pager", check=False).stdout

    def _find_pid1(self) -> int | None:
        """The container's systemd: the nspawn process's descendant named systemd."""
        todo = [self.nspawn.pid]
        while todo:
            pid = todo.pop(0)
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                try:
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return child
                except OSError:
                    continue
                todo.append(child)
        return None

    def console_text(self) -> str:
        self.console.flush()
        return (self.base / "console.log").read_text()[-3000:]

    def sh(self, command: str, check: bool = True, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``command`` with /bin/sh inside the container, with a clean environment."""
        got = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "--", "/usr/bin/env", "-i", f"PATH={PATH}",
             "LANG=C.UTF-8", "SYSTEMD_PAGER=", "/bin/sh", "-c", command],
            capture_output=True, text=True, timeout=timeout, input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and got.returncode != 0:
            raise AssertionError(f"in the container: {command!r} exited {got.returncode}\n"
                                 f"{got.stdout}{got.stderr}")
        return got

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, *match: str) -> list[dict]:
        out = self.sh(f"journalctl -u {unit} -o json --no-pager {' '.join(match)}").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def close(self) -> list[str]:
        """Power off (always), then unmount; returns the problems found while cleaning up."""
        problems: list[str] = []
        if self.nspawn is not None:
            if self.nspawn.poll() is None and self.pid1 is not None:
                got = subprocess.run(
                    ["nsenter", "-t", str(self.pid1), "-a", "--", "systemctl", "poweroff"],
                    capture_output=True, text=True, timeout=30)
                if got.returncode != 0:
                    problems.append(f"systemctl poweroff failed: {got.stderr.strip()}")
                deadline = time.monotonic() + 60
                while self.nspawn.poll() is None and time.monotonic() < deadline:
                    if got.returncode != 0:
                        # No manager socket (yet): SIGRTMIN+4 asks systemd to power off, again
                        # until it does, since one sent before systemd handles it is dropped.
                        os.kill(self.pid1, signal.SIGRTMIN + 4)
                    try:
                        self.nspawn.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        pass
                if self.nspawn.poll() is None:
                    problems.append("the container did not power off within 60 s: killed")
            if self.nspawn.poll() is None:
                os.killpg(self.nspawn.pid, signal.SIGKILL)
                self.nspawn.wait()
        # nspawn removes its propagation directory on a clean exit only.
        propagate = Path("/run/systemd/nspawn/propagate") / self.name
        if propagate.is_dir() and not os.path.ismount(propagate):
            shutil.rmtree(propagate, ignore_errors=True)
        self.console.close()
        if self.overlay:
            subprocess.run(["umount", str(self.root)], capture_output=True)
        mounts = Path("/proc/self/mountinfo").read_text()
        leftover = [line.split()[4] for line in mounts.splitlines()
                    if line.split()[4].startswith(str(self.base))]
        if leftover:
            problems.append(f"mounts left behind: {leftover}")
            for path in reversed(leftover):
                subprocess.run(["umount", "-l", path], capture_output=True)
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    root = os.readlink(proc / "root")
                except OSError:
                    continue
                if root.startswith(str(self.root)):
                    problems.append(f"process {proc.name} left behind in the container's root")
        return problems


def collect_debs(into: Path) -> None:
    """Our packages, built from this checkout, and the Debian ones the container needs, in ``into``."""
    built = debbuild.built()
    into.mkdir()
    for package in ("ksmtuned-py", "python3-ksmtuned-py"):
        shutil.copy2(built.deb(package), into)
    for package in (*DEPENDENCIES, REFERENCE):
        debpkg.unpacked(package)  # apt-get download into the cache, once
        shutil.copy2(sorted((CACHE_DIR / "debs" / package).glob("*.deb"))[-1], into)


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("container")
    try:
        rootfs = cached_rootfs()
        build_wheels(base / "wheels")
        collect_debs(base / "debs")
    except (Unavailable, debbuild.Unavailable, debpkg.Unavailable) as err:
        pytest.skip(str(err))
    c = Container(base, rootfs, base / "wheels", base / "debs")
    try:
        c.boot()
        # The reference, as a Debian host has it, with a setting of the admin's.
        c.sh(f"{APT} /mnt/debs/{REFERENCE}_*.deb", timeout=300)
        with open(c.root / "etc/ksmtuned.conf", "a") as conf:
            conf.write(EDITED_LINE)
        c.apt_output = c.sh(f"{APT} /mnt/debs/ksmtuned-py_*.deb /mnt/debs/python3-ksmtuned-py_*.deb "
                            + " ".join(f"/mnt/debs/{d}_*.deb" for d in DEPENDENCIES), timeout=300).stdout
        yield c
    finally:
        problems = c.close()
        assert not problems, problems


# apt as an admin runs it, from files (the container has no network); never a
# --force-conf option: a conffile prompt would fail on the closed stdin.
APT = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends"


# --- the checks (in order: they share one container) ----------------------------------

def _write_config(c: Container, text: str) -> None:
    (c.root / "etc/ksmtuned.conf").write_text(text)


def _sleep_for(c: Container, sleep_msec: int) -> int:
    """sleep_millisecs the daemon computes for the container's MemTotal."""
    total = int(next(line.split()[1] for line in c.sh("cat /proc/meminfo").stdout.splitlines()
                     if line.startswith("MemTotal:")))
    return max(10, sleep_msec * 16 * 1024 * 1024 // total)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


# An hour between cycles: every cycle seen here was asked for (reload, retune).
# THRES_COEF=200 puts thres above the free memory, so each cycle starts KSM and boosts.
# The debug log and the metrics go where the sandbox lets the daemon write.
PROM_DIR = "/var/lib/prometheus/node-exporter"
GOOD_CONFIG = ("KSM_MONITOR_INTERVAL=3600\nKSM_THRES_COEF=200\nKSM_SLEEP_MSEC=100\n"
               f"DEBUG=1\nLOGFILE=/var/log/ksmtuned\nKSM_METRICS_TEXTFILE={PROM_DIR}\n")


def _invocation(c: Container) -> str:
    """The journal match for the service's current run."""
    return "_SYSTEMD_INVOCATION_ID=" + c.show("ksmtuned-py", "InvocationID")["InvocationID"]


def test_package_replaced_ksmtuned_and_kept_the_admins_config(container: Container):
    c = container
    states = c.sh("dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n' ksmtuned ksmtuned-py "
                  "python3-ksmtuned-py").stdout.split("\n")
    assert [s.split() for s in states if s] == [
        ["rc", "ksmtuned"], ["ii", "ksmtuned-py"], ["ii", "python3-ksmtuned-py"]]
    conf = (c.root / "etc/ksmtuned.conf").read_text()
    assert conf.endswith(EDITED_LINE)  # the admin's file, as it was
    shipped = (debbuild.REPO / "etc/ksmtuned.conf").read_text()
    assert (c.root / "etc/ksmtuned.conf.dpkg-dist").read_text() == shipped
    assert c.sh("dpkg -S /etc/ksmtuned.conf").stdout == "ksmtuned-py: /etc/ksmtuned.conf\n"
    assert "KSM_NPAGES_MAX=1000" in c.sh("ksmtuned-py check-config").stdout
    # Purging the replaced package later leaves the file to its new owner.
    c.sh("dpkg --purge ksmtuned")
    assert (c.root / "etc/ksmtuned.conf").read_text() == conf


def test_package_started_its_service_in_the_sandbox_layout(container: Container):
    c = container
    for unit in ("ksmtuned-py", "ksmtuned-py-ksm"):
        assert c.sh(f"systemctl is-enabled {unit}").stdout.strip() == "enabled"
    _wait(lambda: c.show("ksmtuned-py", "SubState")["SubState"] == "running", 30, "the service")
    pid = c.show("ksmtuned-py", "MainPID")["MainPID"]
    assert c.sh("readlink /run/ksmtune.pid").stdout == "ksmtuned-py/ksmtune.pid\n"
    assert c.sh("cat /run/ksmtune.pid").stdout == f"{pid}\n"
    assert c.sh("stat -c '%a %U' /run/ksmtuned-py /var/log/ksmtuned").stdout == "755 root\n640 root\n"
    assert c.sh("command -v ksmtuned-py").stdout == "/usr/sbin/ksmtuned-py\n"
    assert c.sh("ksmtuned-py retune").stdout == f"asked ksmtuned-py (pid {pid}) to retune\n"


def test_installed_units_verify_clean_inside(container: Container):
    c = container
    unit = (c.root / "lib/systemd/system/ksmtuned-py.service").read_text()
    assert unit == (debbuild.REPO / "systemd/ksmtuned-py.service").read_text()
    assert "ExecStart=/usr/sbin/ksmtuned-py run\n" in unit
    out = c.sh("systemd-analyze verify --man=no /lib/systemd/system/ksmtuned-py.service "
               "/lib/systemd/system/ksmtuned-py-ksm.service 2>&1")
    assert out.stdout == ""


def test_start_is_active_running_with_ready_status(container: Container):
    c = container
    # From a stopped service and KSM as the test sets it.
    c.sh("systemctl stop ksmtuned-py ksmtuned-py-ksm")
    c.set_knobs(**INITIAL_KNOBS)
    _write_config(c, GOOD_CONFIG)
    (c.root / PROM_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (c.root / "etc/default/ksm").write_text("KSM_MAX_KERNEL_PAGES=12345\n")
    # A stand-in for the reference's unit: Conflicts= must stop it.
    (c.root / "etc/systemd/system/ksmtuned.service").write_text(
        "[Service]\nExecStart=/bin/sleep infinity\n")
    c.sh("systemctl daemon-reload && systemctl start ksmtuned.service")
    c.sh("systemctl start ksmtuned-py")
    assert c.show("ksmtuned", "ActiveState")["ActiveState"] == "inactive"
    assert c.ksm_knobs()["max_kernel_pages"] == "12345"
    props = c.show("ksmtuned-py", "ActiveState", "SubState", "StatusText", "MainPID", "Type")
    assert (props["ActiveState"], props["SubState"], props["Type"]) == ("active", "running", "notify")
    assert props["StatusText"].startswith("ready: total "), props
    assert props["StatusText"].endswith("first cycle in 3600s"), props
    # Requires= started the oneshot, which switched KSM on.
    ksm = c.show("ksmtuned-py-ksm", "ActiveState", "SubState")
    assert (ksm["ActiveState"], ksm["SubState"]) == ("active", "exited")
    assert c.ksm_knobs()["run"] == "1"
    assert c.sh("cat /run/ksmtune.pid").stdout.strip() == props["MainPID"]
    assert c.sh("stat -L -c %a /run/ksmtune.pid").stdout.strip() == "644"  # as the reference's
    # No cycle yet: the knobs the daemon decides are as the test left them.
    assert c.ksm_knobs()["pages_to_scan"] == "100"


# Inside the service's mount namespace: the mounts it may write, and tries.  Its
# private /tmp and /var/tmp are its own, discarded when it stops.
WRITABLE_MOUNTS = {"/sys/kernel/mm/ksm", "/run/ksmtuned-py", "/var/log/ksmtuned",
                   "/var/lib/prometheus/node-exporter", "/tmp", "/var/tmp"}
PSEUDO_FS = ("proc", "mqueue", "devpts", "hugetlbfs")
PROBES = {"/run/probe": False, "/run/lock/probe": False, "/dev/shm/probe": False,
          "/run/ksmtuned-py/probe": True, "/var/log/probe": False,
          "/var/lib/probe": False, "/var/lib/prometheus/probe": False,
          "/var/lib/prometheus/node-exporter/probe": True, "/etc/probe": False, "/usr/probe": False,
          "/sys/kernel/mm/ksm/probe": True, "/sys/kernel/probe": False}


def test_sandbox_writes_exactly_the_documented_paths(container: Container):
    c = container
    pid = c.show("ksmtuned-py", "MainPID")["MainPID"]
    inside = f"nsenter -t {pid} -m -- "
    mounts = c.sh(inside + "cat /proc/self/mountinfo").stdout
    writable = set()
    for line in mounts.splitlines():
        fields = line.split()
        point, options, fstype = fields[4], fields[5].split(","), fields[fields.index("-") + 1]
        # /run/host is systemd-nspawn's, in containers only.
        if "rw" in options and fstype not in PSEUDO_FS and not point.startswith("/run/host/"):
            writable.add(point)
    assert writable == WRITABLE_MOUNTS, mounts
    for path, ok in PROBES.items():
        got = c.sh(inside + f"sh -c 'touch {path} && rm {path}'", check=False)
        assert (got.returncode == 0) == ok, (path, got.stderr)
    # The log file can be appended to (but not replaced: /var/log is read-only).
    assert c.sh(inside + "sh -c ': >> /var/log/ksmtuned'", check=False).returncode == 0
    assert c.sh(inside + "sh -c 'mv /var/log/ksmtuned /var/log/ksmtuned.1'", check=False).returncode != 0


def test_reload_rereads_config_and_retunes(container: Container):
    c = container
    _write_config(c, GOOD_CONFIG.replace("KSM_SLEEP_MSEC=100", "KSM_SLEEP_MSEC=200"))
    pid = c.show("ksmtuned-py", "MainPID")["MainPID"]
    c.sh("systemctl reload ksmtuned-py")
    expected_sleep = str(_sleep_for(c, 200))
    # The scratch knobs are plain files, rewritten one after the other: wait for all three
    # (a read between a file's truncation and its write sees it empty).
    _wait(lambda: [c.ksm_knobs()[k] for k in ("run", "pages_to_scan", "sleep_millisecs")]
          == ["1", "300", expected_sleep], 20, "the retune after reload")
    props = c.show("ksmtuned-py", "ActiveState", "SubState", "StatusText", "MainPID")
    assert props["MainPID"] == pid and props["SubState"] == "running"
    _wait(lambda: c.show("ksmtuned-py", "StatusText")["StatusText"].startswith(
        f"running: pages_to_scan=300 sleep={expected_sleep}ms"), 10, "the cycle's status text")
    # Inside the sandbox the daemon wrote its debug log and its metrics.
    log = (c.root / "var/log/ksmtuned").read_text()
    assert f": KSMCTL start 300 {expected_sleep}\n" in log, log
    prom = (c.root / PROM_DIR.lstrip("/") / "ksmtuned-py.prom").read_text()
    assert 'ksmtuned_decision{decision="boost"} 1\n' in prom
    assert "ksmtuned_pages_to_scan 300\n" in prom
    assert "metrics not written" not in c.sh("journalctl -u ksmtuned-py -o cat").stdout


def test_journal_has_structured_decision_fields(container: Container):
    c = container
    entries = c.journal("ksmtuned-py", "KSM_DECISION=start", _invocation(c))
    assert entries, c.sh("journalctl -u ksmtuned-py --no-pager").stdout
    e = entries[-1]
    assert e["KSM_NPAGES"] == "300"
    assert e["KSM_SLEEP"] == str(_sleep_for(c, 200))
    assert int(e["KSM_THRES"]) > int(e["KSM_FREE"])
    assert e["KSM_COMMITTED"] == "0"
    assert e["SYSLOG_IDENTIFIER"] == "ksmtuned-py"
    assert e["_SYSTEMD_UNIT"] == "ksmtuned-py.service"
    assert e["PRIORITY"] == "6"
    assert c.journal("ksmtuned-py", "KSM_DECISION=stop", _invocation(c)) == []


def test_libvirt_hook_retunes_the_running_daemon(container: Container):
    c = container
    c.set_knobs(pages_to_scan=7)
    hook = "/etc/libvirt/hooks/qemu.d/ksmtuned-py"
    t0 = time.monotonic()
    got = c.sh(f"{hook} guest1 started begin -", input=DOMAIN_XML)
    assert time.monotonic() - t0 < 5
    assert (got.stdout, got.stderr) == ("", "")
    # The daemon's npages was 300: this cycle boosts it to 600.
    _wait(lambda: c.ksm_knobs()["pages_to_scan"] == "600", 20, "the hook's retune")


def test_broken_config_fails_the_unit_with_the_error_in_the_journal(container: Container):
    c = container
    _write_config(c, "KSM_MONITOR_INTERVAL=60\nKSM_SLEEP_MSEC=$(reboot)\n")
    got = c.sh("systemctl restart ksmtuned-py", check=False)
    assert got.returncode != 0
    props = c.show("ksmtuned-py", "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert (props["ActiveState"], props["Result"], props["ExecMainStatus"]) == (
        "failed", "exit-code", "78")
    assert props["NRestarts"] == "0"  # RestartPreventExitStatus=78: not retried
    log = c.sh("journalctl -u ksmtuned-py --no-pager -o cat").stdout
    assert "/etc/ksmtuned.conf:2" in log, log
    c.sh("systemctl reset-failed ksmtuned-py")


def test_watchdog_restarts_a_hung_daemon(container: Container):
    c = container
    _write_config(c, GOOD_CONFIG)
    dropin = c.root / "etc/systemd/system/ksmtuned-py.service.d"
    dropin.mkdir(exist_ok=True)
    (dropin / "watchdog.conf").write_text(
        "[Service]\nWatchdogSec=3\nTimeoutAbortSec=2\nRestartSec=1\n")
    try:
        c.sh("systemctl daemon-reload && systemctl start ksmtuned-py")
        before = c.show("ksmtuned-py", "MainPID", "NRestarts", "WatchdogUSec")
        assert before["WatchdogUSec"] == "3s"
        time.sleep(4)  # fed every 1.5 s: still the same process
        assert c.show("ksmtuned-py", "MainPID")["MainPID"] == before["MainPID"]
        c.sh(f"kill -STOP {before['MainPID']}")

        def restarted() -> bool:
            now = c.show("ksmtuned-py", "MainPID", "NRestarts", "SubState")
            return (now["SubState"] == "running" and now["MainPID"] not in ("0", before["MainPID"])
                    and int(now["NRestarts"]) == int(before["NRestarts"]) + 1)

        _wait(restarted, 30, "the watchdog restart")
        log = c.sh("journalctl -u ksmtuned-py --no-pager").stdout
        assert "Watchdog timeout" in log, log
    finally:
        shutil.rmtree(dropin)
        c.sh("systemctl daemon-reload")


def test_stop_exits_cleanly(container: Container):
    c = container
    c.sh("systemctl restart ksmtuned-py")
    knobs = c.ksm_knobs()
    c.sh("systemctl stop ksmtuned-py")
    props = c.show("ksmtuned-py", "ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert (props["ActiveState"], props["Result"], props["ExecMainStatus"]) == (
        "inactive", "success", "0")
    assert c.sh("test -e /run/ksmtune.pid", check=False).returncode == 1  # a dangling link now
    assert c.sh("test -e /run/ksmtuned-py", check=False).returncode == 1  # RuntimeDirectory removed
    assert c.ksm_knobs() == knobs  # KSM left as it is
    log = c.sh("journalctl -u ksmtuned-py --no-pager -o cat").stdout
    assert "stopped; KSM left as it is" in log
    # The hook with no daemon: exit 0, nothing changes.
    c.sh("/etc/libvirt/hooks/qemu.d/ksmtuned-py guest1 stopped end -", input=DOMAIN_XML)
    time.sleep(2)
    assert c.ksm_knobs() == knobs
    # Stopping the oneshot switches KSM off, as ksm.service does.
    c.sh("systemctl stop ksmtuned-py-ksm")
    assert c.ksm_knobs()["run"] == "0"


def test_package_purge_removes_the_service(container: Container):
    c = container
    c.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q ksmtuned-py python3-ksmtuned-py", timeout=300)
    assert c.show("ksmtuned-py", "LoadState")["LoadState"] == "not-found"
    for path in ("usr/sbin/ksmtuned-py", "etc/ksmtuned.conf", "etc/ksmtuned.conf.dpkg-dist",
                 "lib/systemd/system/ksmtuned-py.service", "usr/lib/python3/dist-packages/ksmtuned_py"):
        assert not (c.root / path).exists(), path


def test_venv_install_runs_under_systemd_too(container: Container):
    """The README's other way: a venv, `ksmtuned-py install`, tmpfiles, the units in /etc."""
    c = container
    c.sh(f"python3 -m venv {VENV} && {VENV}/bin/pip install -q --no-index "
         f"--find-links /mnt/wheels ksmtuned-py", timeout=300)
    # the container has no libvirt: install would skip the hook, which this test runs
    out = c.sh(f"{VENV}/bin/ksmtuned-py install --libvirt-hook").stdout
    assert "systemd-tmpfiles --create /etc/tmpfiles.d/ksmtuned-py.conf" in out
    c.sh("systemd-tmpfiles --create /etc/tmpfiles.d/ksmtuned-py.conf && systemctl daemon-reload")
    _write_config(c, GOOD_CONFIG)
    unit = (c.root / "etc/systemd/system/ksmtuned-py.service").read_text()
    assert f"ExecStart={VENV}/bin/ksmtuned-py run\n" in unit
    c.sh("systemctl start ksmtuned-py")
    props = c.show("ksmtuned-py", "SubState", "MainPID", "StatusText")
    assert props["SubState"] == "running" and props["StatusText"].startswith("ready: "), props
    assert c.sh("cat /run/ksmtune.pid").stdout.strip() == props["MainPID"]
    assert (c.root / "usr/local/share/man/man8/ksmtuned-py.8").is_file()
    c.set_knobs(pages_to_scan=7)
    c.sh("/etc/libvirt/hooks/qemu.d/ksmtuned-py guest1 started begin -", input=DOMAIN_XML)
    _wait(lambda: c.ksm_knobs()["pages_to_scan"] == "300", 20, "the hook's retune")
    c.sh("systemctl stop ksmtuned-py")
    assert c.show("ksmtuned-py", "Result")["Result"] == "success"
