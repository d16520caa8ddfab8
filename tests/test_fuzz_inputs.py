"""Property tests for every parser of outside input: any bytes in, a value or one clear error out.

/proc/meminfo, /proc/PID/stat, status and comm; any bytes written to a served tree's
KSM files (applied or reverted as the simulated kernel answers, which the
conformance table pins to Linux 6.18); any YAML to the scenario loader and to
``sysfs-emu event``; the configuration file as bytes.

Hypothesis runs derandomized (its examples are fixed by the test's own code, no
seed and no example database), without deadlines: a test cannot pass or fail by
luck or by the machine's speed.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ksmtuned_py.config import KEYS, load
from ksmtuned_py.config_syntax import ConfigError, parse_text
from ksmtuned_py.guestscan import GuestScanner
from ksmtuned_py.readings import ReadingError, read_meminfo
from sysfs_emu import Simulation
from sysfs_emu.errors import ScenarioError
from sysfs_emu.kernel import Kernel
from sysfs_emu.runner import Server
from sysfs_emu.scenario import load_scenario, parse_yaml
from sysfs_emu import tree as tree_module
from sysfs_emu.tree import KSM_ATTRS, KSM_DIR, Tree
from tools import probe_ksm_conformance as probe


def fuzz(examples: int):
    """Settings for these tests: fixed examples (derandomized, no database), no deadline."""
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


# Bytes a /proc file may hold: anything, weighted towards what parsers trip on.
_awkward = st.sampled_from([b":", b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c", b"\x1c", b"\xff", b"\xc2\xb2",
                            b"\xd9\xa1", b"1_0", b"-", b"+", b"(", b")", b"0", b"9", b"kB", b"\0", b"MemTotal",
                            b"MemFree", b"Buffers", b"Cached", b"VmRSS:", b"Pss:", b"99999999999999999999"])
_bytes = st.one_of(st.binary(max_size=300), st.lists(_awkward, max_size=40).map(b"".join))


def _single_line_error(exc: Exception) -> None:
    assert str(exc) and "\n" not in str(exc)


# --- /proc/meminfo ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proc_root():
    with tempfile.TemporaryDirectory(prefix="fuzz-proc-") as d:
        root = Path(d)
        (root / "proc").mkdir()
        yield root


@fuzz(400)
@given(_bytes)
def test_any_bytes_in_meminfo_are_read_or_one_reading_error(proc_root, data):
    (proc_root / "proc/meminfo").write_bytes(data)
    try:
        mem = read_meminfo(proc_root)
    except ReadingError as e:
        _single_line_error(e)
    else:
        assert mem.total > 0


_FIELDS = ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached")
# a line that is not one of the fields: starts with X, holds no line break str.splitlines() knows
_junk = st.binary(max_size=40).map(lambda b: b"X" + re.sub(rb"[\n\r\x0b\x0c\x1c\x1d\x1e]", b"", b))


@fuzz(200)
@given(st.lists(st.integers(0, 2**62), min_size=5, max_size=5), st.lists(_junk, max_size=6), st.randoms(use_true_random=False))
def test_meminfo_fields_are_found_among_any_other_lines(proc_root, values, junk, rnd):
    values[0] += 1  # MemTotal > 0
    lines = [f"{name}: {v} kB".encode() for name, v in zip(_FIELDS, values)] + junk
    rnd.shuffle(lines)
    (proc_root / "proc/meminfo").write_bytes(b"\n".join(lines) + b"\n")
    mem = read_meminfo(proc_root)
    assert (mem.total, mem.free, mem.available, mem.buffers, mem.cached) == tuple(values)


# --- /proc/PID/stat, status, comm --------------------------------------------------------------------


def _stat_line(comm: bytes, start: int, rss: int, flags: int) -> bytes:
    fields = ["S", "1", "1", "1", "0", "-1", str(flags)] + ["0"] * 12 + [str(start), "0", str(rss)] + ["0"] * 28
    return b"1234 (" + comm + b") " + " ".join(fields).encode() + b"\n"


@fuzz(400)
@given(_bytes, _bytes, _bytes)
def test_any_bytes_in_a_process_directory_never_stop_the_scan(proc_root, stat, status, comm):
    pid = proc_root / "proc/1234"
    pid.mkdir(exist_ok=True)
    (pid / "stat").write_bytes(stat)
    (pid / "status").write_bytes(status)
    (pid / "comm").write_bytes(comm)
    for metric in ("rss", "pss"):
        guests = GuestScanner(proc_root, r".", metric).scan()  # "." : any readable process is a guest
        assert all(g.pid == 1234 and g.kb >= 0 for g in guests)


@fuzz(300)
@given(st.binary(min_size=0, max_size=20), st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 2**40),
       st.booleans())
def test_a_well_formed_process_is_read_exactly_whatever_its_name(proc_root, comm, start, rss, vmrss, guest_like):
    name = (b"qemu-kvm" if guest_like else b"") + comm
    pid = proc_root / "proc/1234"
    pid.mkdir(exist_ok=True)
    (pid / "stat").write_bytes(_stat_line(name, start, rss, 0))
    (pid / "status").write_bytes(b"Name:\tx\nVmRSS:\t" + str(vmrss).encode() + b" kB\n")
    (pid / "comm").write_bytes(name[:15] + b"\n")
    guests = GuestScanner(proc_root, r"^qemu-kvm").scan()
    expected_guest = name.decode("utf-8", errors="replace").startswith("qemu-kvm")
    assert [(g.pid, g.kb) for g in guests] == ([(1234, vmrss)] if expected_guest else [])


# --- any bytes written to a served tree's KSM files ----------------------------------------------------

_TABLE = [row for row in probe.load_table()["rows"] if row["state"] == "none" and not row["setup"]
          and row["file"] in KSM_ATTRS]


def _fresh_tree(directory: Path) -> Tree:
    sim = Simulation({"host": {"memory": "64MiB"}})
    tree = Tree(sim, directory)
    tree.create()
    return tree


def _write_like_echo(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _written_through_the_tree(name: str, data: bytes) -> tuple[str, str]:
    """(what the file reads after the tree's ticks, what the simulated kernel reads)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-tree-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        tree = _fresh_tree(Path(d))
        path = Path(d) / KSM_DIR / name
        _write_like_echo(path, data)
        with mock.patch.object(tree_module, "EMPTY_GRACE_S", 0.0):
            tree.apply_writes()
            tree.apply_writes()  # an empty write is given one tick to be followed by data
        return path.read_text(), tree.sim.kernel.read_attr(name)


@fuzz(250)
@given(st.sampled_from(_TABLE))
def test_writes_to_the_tree_are_applied_or_reverted_as_the_conformance_table_says(row):
    data = probe.decode_input(row["input"])
    shown, kernel = _written_through_the_tree(row["file"], data)
    expected = row["readback"] if row["errno"] == 0 else probe.load_table()["defaults"][row["file"]]
    assert shown == kernel == expected, (row["file"], data, row["errname"])


@fuzz(300)
@given(st.sampled_from(sorted(KSM_ATTRS)), st.one_of(_bytes, st.binary(min_size=4090, max_size=4200)))
def test_any_bytes_written_to_the_tree_are_what_the_simulated_kernel_answers(name, data):
    oracle = Kernel()
    try:
        oracle.write_attr(name, data)
    except OSError:
        pass  # refused: the file must read as before
    shown, kernel = _written_through_the_tree(name, data)
    assert shown == kernel == oracle.read_attr(name)


# --- YAML: the scenario loader and sysfs-emu event ----------------------------------------------------

_words = st.sampled_from(["host", "memory", "processes", "events", "regions", "pages", "size", "fill", "pool",
                          "unique", "zero", "same", "name", "start", "exit", "rewrite", "sysfs", "touch", "at",
                          "process", "region", "first", "run", "pages_to_scan", "id", "1GiB", "5m", "-1", "1e9",
                          "lazy", "mergeable", "cmdline", "qemu-kvm", "ksm", "description", "used", "x"])
_plain = st.one_of(st.none(), st.booleans(), st.integers(-2**65, 2**65), st.floats(), _words, st.text(max_size=10))
_structure = st.recursive(_plain, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(_words, inner, max_size=4)), max_leaves=20)
_yaml_syntax = st.sampled_from(["{", "}", "[", "]", ":", "- ", "&a ", "*a", "!!python/object:os.system ", "!!binary ",
                                "? ", "|", ">", "'", '"', "#", "\n", "  ", "\t", "%YAML 1.1\n", "---\n", "...\n",
                                "\x00", "\ufeff", "\udcff", "\x85", "=", "<<: *a"])
_yaml_text = st.one_of(
    _structure.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    st.lists(st.one_of(_yaml_syntax, _words), max_size=30).map("".join),
    st.text(max_size=200),
)


@fuzz(400)
@given(_yaml_text)
def test_any_yaml_loads_as_a_scenario_or_one_scenario_error(text):
    try:
        load_scenario(parse_yaml(text), "fuzz.yaml")
    except ScenarioError as e:
        _single_line_error(e)


@pytest.fixture(scope="module")
def server():
    with tempfile.TemporaryDirectory(prefix="fuzz-server-") as d:
        sim = Simulation({"host": {"memory": "256MiB"},
                          "processes": [{"name": "qemu-kvm", "id": 0, "regions": [{"pages": 64, "fill": "unique"}]}]})
        srv = Server(sim, Path(d))
        srv.tree.create()
        yield srv


class _Bugs(logging.Handler):
    """Records what sysfs-emu logs as a failure it did not foresee (a traceback in its log)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@fuzz(400)
@given(st.one_of(_yaml_text.map(lambda t: t.encode("utf-8", errors="surrogateescape")), _bytes))
def test_any_bytes_given_to_sysfs_emu_event_are_applied_or_one_error(server, data):
    bugs = _Bugs()
    logging.getLogger("sysfs_emu").addHandler(bugs)
    try:
        result = server.apply_event_bytes(data)
    finally:
        logging.getLogger("sysfs_emu").removeHandler(bugs)
    assert result == "ok" or (result.startswith("error: ") and "\n" not in result), result
    assert not bugs.records, [r.getMessage() for r in bugs.records]


# --- the configuration file as bytes --------------------------------------------------------------------

_conf_pieces = st.sampled_from([b"KSM_NPAGES_MAX", b"DEBUG", b"PIDFILE", b"LOGFILE", b"export ", b"=", b"'", b'"',
                                b"$", b"(", b"`", b";", b"#", b" ", b"\t", b"\n", b"\r", b"\\", b"~", b"1", b"-5",
                                b"x", b"\xff", b"\xe9", b"\xc3\xa9", b"\0", b"KSM_MONITOR_INTERVAL=", b"/p"])


@fuzz(400)
@given(st.one_of(st.binary(max_size=200), st.lists(_conf_pieces, max_size=40).map(b"".join)))
def test_any_bytes_as_the_config_load_or_fail_with_a_line_and_check_config_round_trips(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("conf") / "ksmtuned.conf"
    path.write_bytes(data)
    try:
        cfg = load(str(path), environ={})
    except ConfigError as e:
        _single_line_error(e)
        assert e.line is not None and 1 <= e.line <= data.count(b"\n") + 1
        return
    assert set(cfg.settings) == set(KEYS)
    # what check-config prints is a config that reads back to the same values
    printed = "\n".join(f"{key}={shlex.quote(s.text)}" for key, s in cfg.settings.items()) + "\n"
    again = {a.key: a.value for a in parse_text(printed, "check-config")}
    assert again == {key: s.text for key, s in cfg.settings.items()}
