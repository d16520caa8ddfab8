"""Scenarios: validation with exact messages, YAML loading, and their effect in a running Simulation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from sysfs_emu import ScenarioError, Simulation
from sysfs_emu.scenario import (
    ContentIds,
    ExitProcess,
    Fill,
    Rewrite,
    SysfsWrite,
    load_scenario,
    load_yaml,
)

GiB = 1 << 30
MiB = 1 << 20


def guest(name="qemu-system-x86", pages=256, fill="pool", **extra):
    region = {"pages": pages, "fill": fill}
    if fill == "pool":
        region["pool"] = extra.pop("pool", "debian")
    if fill == "same":
        region["tag"] = extra.pop("tag", "t")
    region.update(extra.pop("region", {}))
    return {"name": name, "regions": [region], **extra}


def base(**extra):
    data = {"host": {"memory": "1GiB"}}
    data.update(extra)
    return data


def error_of(data, source="scenario.yaml") -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(data, source)
    return str(info.value)


# ---------------------------------------------------------------------------
# Errors: one line naming the file and the place
# ---------------------------------------------------------------------------

HOST_KEYS = "memory, buffers, cached, used, swap, uptime, boot_time, pid_base, cpus, nodes"
PROC_KEYS = "name, cmdline, id, start, exit, mergeable_all, regions"
REGION_KEYS = "pages, size, mergeable, lazy, thp, node, fill, tag, pool, offset, ids, index"


@pytest.mark.parametrize(
    "data, message",
    [
        ("hello", "scenario.yaml: must be a mapping with host, ksm, processes, events, got 'hello'"),
        ([1, 2], "scenario.yaml: must be a mapping with host, ksm, processes, events, got a list"),
        ({"hosts": {}}, "scenario.yaml: hosts: unknown key (expected one of: description, host, ksm, processes, events)"),
        ({"host": []}, "scenario.yaml: host: must be a mapping, got a list"),
        ({"host": {"memory": "1GiB", "ram": 1}}, f"scenario.yaml: host.ram: unknown key (expected one of: {HOST_KEYS})"),
        ({"host": {"memory": "lots"}}, "scenario.yaml: host.memory: not a size: 'lots' (write e.g. 4096, '512MiB', '8GiB')"),
        ({"host": {"memory": "1MiB"}}, "scenario.yaml: host.memory: must be at least 16MiB, got 1MiB"),
        (
            {"host": {"memory": "1GiB", "used": "800MiB", "cached": "300MiB"}},
            "scenario.yaml: host: buffers + cached + used = 1101MiB is more than host.memory 1GiB",
        ),
        ({"host": {"memory": "1GiB", "pid_base": 1}}, "scenario.yaml: host.pid_base: must be >= 2, got 1"),
        ({"host": {"memory": "1GiB", "uptime": "soon"}}, "scenario.yaml: host.uptime: not a duration: 'soon' "
         "(write seconds, or e.g. '250ms', '30s', '5m', '2h', '1d', '1h30m')"),
        ({"host": {"memory": "1GiB", "boot_time": "yesterday"}},
         "scenario.yaml: host.boot_time: must be seconds since the epoch (>= 0), got 'yesterday'"),
        (base(description=5), "scenario.yaml: description: must be a string, got 5"),
        # ksm: time-0 writes
        (base(ksm={"run": 3}), "scenario.yaml: ksm.run: the kernel refuses '3': EINVAL (Invalid argument)"),
        (base(ksm={"max_page_sharing": 1}),
         "scenario.yaml: ksm.max_page_sharing: the kernel refuses '1': EINVAL (Invalid argument)"),
        (base(ksm={"max_page_sharing": 2**31}),
         "scenario.yaml: ksm.max_page_sharing: the kernel refuses '2147483648': ERANGE (Numerical result out of range)"),
        (base(ksm={"advisor_mode": "scan-time", "pages_to_scan": 5}),
         "scenario.yaml: ksm.pages_to_scan: the kernel refuses '5': EINVAL (Invalid argument)"),
        (base(ksm={"sleep_millisecs": -1}),
         "scenario.yaml: ksm.sleep_millisecs: the kernel refuses '-1': EINVAL (Invalid argument)"),
        (base(ksm={"pages_shared": 1}), "scenario.yaml: ksm.pages_shared: read-only counter, cannot be written (EACCES)"),
        (base(ksm={"scan_speed": 1}), "scenario.yaml: ksm.scan_speed: no such file in /sys/kernel/mm/ksm"),
        (base(ksm={"run": [1]}), "scenario.yaml: ksm.run: must be a number or a string, got a list"),
        (base(ksm=[1]), "scenario.yaml: ksm: must be a mapping of /sys/kernel/mm/ksm file names to values, got a list"),
        # processes
        (base(processes={"a": 1}), "scenario.yaml: processes: must be a list, got a mapping"),
        (base(processes=[{"regions": []}]),
         "scenario.yaml: processes[0].name: missing (the process's comm, e.g. qemu-system-x86)"),
        (base(processes=[{"name": ""}]), "scenario.yaml: processes[0].name: must not be empty"),
        (base(processes=[{"name": "a/b"}]),
         "scenario.yaml: processes[0].name: must not contain '/', newlines or NUL bytes, got 'a/b'"),
        (base(processes=[{"name": "q", "pid": 4}]), f"scenario.yaml: processes[0].pid: unknown key (expected one of: {PROC_KEYS})"),
        (base(processes=[{"name": "q", "id": -1}]), "scenario.yaml: processes[0].id: must be >= 0, got -1"),
        (base(processes=[{"name": "q", "id": "one"}]), "scenario.yaml: processes[0].id: must be a whole number, got 'one'"),
        (base(processes=[{"name": "q"}, {"name": "r", "id": 0}]),
         "scenario.yaml: processes[1].id: id 0 is already used by processes[0]"),
        (base(processes=[{"name": "q", "cmdline": []}]),
         "scenario.yaml: processes[0].cmdline: must be a string or a non-empty list of strings, got a list"),
        (base(processes=[{"name": "q", "cmdline": ["a", None]}]),
         "scenario.yaml: processes[0].cmdline[1]: must be a string, got nothing (null)"),
        (base(processes=[{"name": "q", "start": "-1s"}]),
         "scenario.yaml: processes[0].start: a duration cannot be negative, got '-1s'"),
        (base(processes=[{"name": "q", "start": "1h", "exit": "30m"}]),
         "scenario.yaml: processes[0].exit: must be after the start (1h), got 30m"),
        (base(processes=[{"name": "q", "start": "1h", "exit": "1h"}]),
         "scenario.yaml: processes[0].exit: must be after the start (1h), got 1h"),
        (base(processes=[{"name": "q", "mergeable_all": "yes"}]),
         "scenario.yaml: processes[0].mergeable_all: must be true or false, got 'yes'"),
        (base(processes=[{"name": "q", "regions": {}}]), "scenario.yaml: processes[0].regions: must be a list, got a mapping"),
        # regions
        (base(processes=[guest(), guest(pages=-5)]), "scenario.yaml: processes[1].regions[0].pages: must be >= 0, got -5"),
        (base(processes=[guest(region={"pagez": 3})]),
         f"scenario.yaml: processes[0].regions[0].pagez: unknown key (expected one of: {REGION_KEYS})"),
        (base(processes=[{"name": "q", "regions": [{"fill": "zero"}]}]),
         "scenario.yaml: processes[0].regions[0]: needs pages or size"),
        (base(processes=[{"name": "q", "regions": [{"pages": 1, "size": 4096, "fill": "zero"}]}]),
         "scenario.yaml: processes[0].regions[0]: give either pages or size, not both"),
        (base(processes=[{"name": "q", "regions": [{"size": "1 parsec", "fill": "zero"}]}]),
         "scenario.yaml: processes[0].regions[0].size: unknown size unit 'parsec' in '1 parsec' "
         "(use B, KiB, MiB, GiB, TiB, K, M, G, T, or kB, MB, GB, TB)"),
        (base(processes=[{"name": "q", "regions": [{"pages": 3}]}]),
         "scenario.yaml: processes[0].regions[0].fill: missing (one of: same, pool, unique, zero, captured)"),
        (base(processes=[guest(fill="random")]),
         "scenario.yaml: processes[0].regions[0].fill: must be one of same, pool, unique, zero, captured, got 'random'"),
        (base(processes=[{"name": "q", "regions": [{"pages": 3, "fill": "same"}]}]),
         "scenario.yaml: processes[0].regions[0].tag: missing (fill: same needs the content's tag)"),
        (base(processes=[{"name": "q", "regions": [{"pages": 3, "fill": "pool"}]}]),
         "scenario.yaml: processes[0].regions[0].pool: missing (fill: pool needs the pool's name)"),
        (base(processes=[{"name": "q", "regions": [{"pages": 3, "fill": "zero", "tag": "x"}]}]),
         "scenario.yaml: processes[0].regions[0].tag: only goes with fill: same"),
        (base(processes=[{"name": "q", "regions": [{"pages": 3, "fill": "unique", "offset": 2}]}]),
         "scenario.yaml: processes[0].regions[0].offset: only goes with fill: pool"),
        (base(processes=[guest(region={"offset": -1})]),
         "scenario.yaml: processes[0].regions[0].offset: must be >= 0, got -1"),
        (base(processes=[guest(region={"mergeable": 1})]),
         "scenario.yaml: processes[0].regions[0].mergeable: must be true or false, got 1"),
        (base(processes=[guest(fill="same", tag=None)]),
         "scenario.yaml: processes[0].regions[0].tag: must be a non-empty string or a number, got nothing (null)"),
        # more memory than the host has
        (base(processes=[guest(pages=300000)]),
         "scenario.yaml: processes[0]: starting process 0 at 0s brings the guests' resident memory to 300000 pages "
         "(1.14GiB), more than the host has for them (1008MiB = host.memory 1GiB - host.used 16MiB)"),
        (base(processes=[guest(pages=200000), guest(pages=100000, start="10m")]),
         "scenario.yaml: processes[1]: starting process 1 at 10m brings the guests' resident memory to 300000 pages "
         "(1.14GiB), more than the host has for them (1008MiB = host.memory 1GiB - host.used 16MiB)"),
        # events
        (base(events={"at": 1}), "scenario.yaml: events: must be a list, got a mapping"),
        (base(events=[{"sysfs": {"run": 1}}]), "scenario.yaml: events[0].at: missing (when the event happens, e.g. 30s)"),
        (base(events=[{"at": "5x", "sysfs": {"run": 1}}]),
         "scenario.yaml: events[0].at: not a duration: '5x' (write seconds, or e.g. '250ms', '30s', '5m', '2h', '1d', '1h30m')"),
        (base(events=[{"at": 1}]),
         "scenario.yaml: events[0]: needs exactly one of sysfs, start, exit, rewrite, touch, madvise, got none"),
        (base(events=[{"at": 1, "sysfs": {"run": 1}, "exit": 0}]),
         "scenario.yaml: events[0]: needs exactly one of sysfs, start, exit, rewrite, touch, madvise, got sysfs, exit"),
        (base(events=[{"at": 1, "stop": 0}]),
         "scenario.yaml: events[0].stop: unknown key (expected one of: at, sysfs, start, exit, rewrite, touch, madvise)"),
        (base(events=[{"at": 1, "sysfs": {}}]), "scenario.yaml: events[0].sysfs: must name at least one file"),
        (base(events=[{"at": 1, "sysfs": {"full_scans": 0}}]),
         "scenario.yaml: events[0].sysfs.full_scans: read-only counter, cannot be written (EACCES)"),
        (base(events=[{"at": 5, "exit": 3}]), "scenario.yaml: events[0].exit: no process with id 3 is running at 5s"),
        (base(processes=[guest()], events=[{"at": "1h", "exit": 0}, {"at": "2h", "exit": 0}]),
         "scenario.yaml: events[1].exit: no process with id 0 is running at 2h"),
        (base(processes=[guest(start="1h")], events=[{"at": "30m", "exit": 0}]),
         "scenario.yaml: events[0].exit: no process with id 0 is running at 30m"),
        (base(processes=[guest(exit="1h")], events=[{"at": "2h", "exit": 0}]),
         "scenario.yaml: events[0].exit: no process with id 0 is running at 2h"),
        (base(events=[{"at": 1, "exit": "first"}]), "scenario.yaml: events[0].exit: must be a whole number, got 'first'"),
        (base(processes=[guest()], events=[{"at": 1, "start": guest(id=0)}]),
         "scenario.yaml: events[0].start.id: id 0 is already used by processes[0]"),
        (base(events=[{"at": 1, "start": guest(start=5)}]),
         "scenario.yaml: events[0].start.start: unknown key (expected one of: name, cmdline, id, exit, mergeable_all, regions)"),
        (base(processes=[guest(pages=3, fill="zero")],
              events=[{"at": "1m", "rewrite": {"process": 0, "first": 2, "pages": 2, "fill": "unique"}}]),
         "scenario.yaml: events[0].rewrite.pages: first + pages = 4 is past the end of region 0 (3 pages)"),
        (base(processes=[guest(pages=3, fill="zero")],
              events=[{"at": "1m", "rewrite": {"process": 0, "first": 4, "fill": "unique"}}]),
         "scenario.yaml: events[0].rewrite.first: region 0 of process 0 has 3 pages, got first 4"),
        (base(processes=[guest(pages=3, fill="zero")],
              events=[{"at": "1m", "rewrite": {"process": 0, "region": 1, "fill": "unique"}}]),
         "scenario.yaml: events[0].rewrite.region: process 0 has 1 region(s), no region 1"),
        (base(processes=[guest(pages=3, fill="zero")],
              events=[{"at": "1m", "rewrite": {"process": 7, "fill": "unique"}}]),
         "scenario.yaml: events[0].rewrite.process: no process with id 7 is running at 1m"),
        (base(processes=[guest(pages=3, fill="zero")], events=[{"at": "1m", "rewrite": {"fill": "unique"}}]),
         "scenario.yaml: events[0].rewrite.process: missing (the id of the process that writes)"),
        (base(processes=[guest(pages=3, fill="zero")],
              events=[{"at": "1m", "rewrite": {"process": 0, "fill": "garbage"}}]),
         "scenario.yaml: events[0].rewrite.fill: must be one of same, pool, unique, zero, captured, got 'garbage'"),
        (base(processes=[guest(pages=3, fill="zero")],
              events=[{"at": "1m", "rewrite": {"process": 0, "first": -1, "fill": "zero"}}]),
         "scenario.yaml: events[0].rewrite.first: must be >= 0, got -1"),
        (base(processes=[guest(pages=3, fill="zero")], events=[{"at": "1m", "touch": {"process": 3}}]),
         "scenario.yaml: events[0].touch.process: no process with id 3 is running at 1m"),
        (base(processes=[guest(pages=3, fill="zero")], events=[{"at": "1m", "touch": {"process": 0, "fill": "zero"}}]),
         "scenario.yaml: events[0].touch.fill: unknown key (expected one of: process, region, first, pages)"),
        (base(processes=[guest(pages=3, fill="zero")], events=[{"at": "1m", "touch": {"process": 0, "pages": 4}}]),
         "scenario.yaml: events[0].touch.pages: first + pages = 4 is past the end of region 0 (3 pages)"),
        (base(processes=[guest(pages=3, fill="zero")], events=[{"at": "1m", "touch": 0}]),
         "scenario.yaml: events[0].touch: must be a mapping, got 0"),
    ],
)
def test_errors_name_the_place(data, message):
    assert error_of(data) == message


def test_nothing_is_built_when_a_later_part_is_wrong():
    """Validation happens before any state exists: a bad event fails the constructor outright."""
    data = base(processes=[guest()], ksm={"run": 1}, events=[{"at": "1h", "exit": 9}])
    with pytest.raises(ScenarioError) as info:
        Simulation(data)
    assert str(info.value) == "scenario: events[0].exit: no process with id 9 is running at 1h"


def test_input_mapping_is_not_modified():
    data = base(processes=[guest(), {"name": "x", "regions": []}], events=[{"at": 1, "start": {"name": "y"}}])
    before = copy.deepcopy(data)
    load_scenario(data)
    assert data == before


# ---------------------------------------------------------------------------
# What a valid scenario becomes
# ---------------------------------------------------------------------------


def test_defaults():
    s = load_scenario({"host": {"memory": "8GiB"}, "processes": [{"name": "qemu-system-x86_64-long-name"}]})
    assert s.host.memory == 8 * GiB
    assert (s.host.buffers, s.host.cached, s.host.used) == (8 * MiB, 256 * MiB, 128 * MiB)
    assert s.host.swap == 0 and s.host.pid_base == 1000 and s.host.uptime == 0.0
    (p,) = s.processes
    assert (p.id, p.start, p.exit, p.cmdline, p.regions, p.mergeable_all) == (
        0, 0.0, None, ("qemu-system-x86_64-long-name",), (), False)
    assert s.ksm == () and s.events == ()


def test_memory_defaults_to_this_machine():
    with open("/proc/meminfo") as f:
        total_kb = int(f.readline().split()[1])
    assert load_scenario({}).host.memory == total_kb * 1024
    assert load_scenario(None).host.memory == total_kb * 1024


def test_region_forms():
    s = load_scenario(base(processes=[{"name": "q", "cmdline": "qemu-system-x86_64 -m 1024 -enable-kvm", "regions": [
        {"size": "1MiB", "fill": "zero"},
        {"size": 4097, "fill": "unique", "mergeable": False},
        {"pages": 10, "fill": "same", "tag": 7, "lazy": True},
        {"pages": 10, "fill": "pool", "pool": "win", "offset": 100},
    ]}]))
    (p,) = s.processes
    assert p.cmdline == ("qemu-system-x86_64", "-m", "1024", "-enable-kvm")
    assert [r.pages for r in p.regions] == [256, 2, 10, 10]  # sizes round up to whole pages
    assert [r.mergeable for r in p.regions] == [True, False, True, True]
    assert [r.lazy for r in p.regions] == [False, False, True, False]
    assert [r.fill for r in p.regions] == [Fill("zero"), Fill("unique"), Fill("same", tag="7"), Fill("pool", pool="win", offset=100)]
    assert p.pages == 278 and p.resident_pages_at_start == 268


def test_ksm_values_become_text_in_order():
    s = load_scenario(base(ksm={"sleep_millisecs": 0, "use_zero_pages": True, "smart_scan": False,
                                "advisor_mode": "scan-time", "run": 1}))
    assert s.ksm == (("sleep_millisecs", "0"), ("use_zero_pages", "1"), ("smart_scan", "0"),
                     ("advisor_mode", "scan-time"), ("run", "1"))


def test_ids_default_to_position_and_event_starts_take_free_ids():
    s = load_scenario(base(
        processes=[guest(), guest(id=5), guest()],
        events=[{"at": 10, "start": guest()}, {"at": 20, "start": guest(id=1)}, {"at": 30, "start": guest()}],
    ))
    assert [p.id for p in s.processes] == [0, 5, 2]
    assert [e.action.process.id for e in s.events] == [3, 1, 4]


def test_timeline_is_in_time_order_exits_then_starts_then_events_at_equal_times():
    s = load_scenario(base(
        processes=[guest(start="1m", exit="3m"), guest(pages=1)],
        events=[
            {"at": "2m", "sysfs": {"run": 1}},
            {"at": "1m", "rewrite": {"process": 0, "first": 10, "pages": 5, "fill": "same", "tag": "x"}},
            {"at": "1m", "exit": 1},
            {"at": "90s", "rewrite": {"process": 0, "first": 250, "fill": "unique"}},
        ],
    ))
    got = [(e.at, type(e.action).__name__, e.where) for e in s.timeline]
    assert got == [
        (0.0, "StartProcess", "processes[1]"),
        (60.0, "StartProcess", "processes[0]"),
        (60.0, "Rewrite", "events[1]"),
        (60.0, "ExitProcess", "events[2]"),
        (90.0, "Rewrite", "events[3]"),
        (120.0, "SysfsWrite", "events[0]"),
        (180.0, "ExitProcess", "processes[0].exit"),
    ]
    # a rewrite without pages runs to the end of the region
    assert s.timeline[4].action == Rewrite(process=0, region=0, first=250, pages=6, fill=Fill("unique"))


def test_processes_that_do_not_overlap_may_each_use_most_of_the_memory():
    s = load_scenario(base(processes=[guest(pages=200000, exit="1h"), guest(pages=200000, start="1h")]))
    assert len(s.processes) == 2
    # lazy regions do not count until they are written
    load_scenario(base(processes=[guest(pages=200000), guest(pages=200000, region={"lazy": True})]))


# ---------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------

EXAMPLE = """\
description: Two guests of the same OS share their pool pages.
host:
  memory: 2GiB
  buffers: 16MiB
  cached: 128MiB
  used: 64MiB
ksm:
  pages_to_scan: 1000
  sleep_millisecs: 10
processes:
  - name: qemu-system-x86
    cmdline: [qemu-system-x86_64, -name, debian-1, -m, "256", -enable-kvm]
    regions:
      - {size: 200MiB, fill: pool, pool: debian-12}
      - {size: 56MiB, fill: unique}
  - name: qemu-system-x86
    cmdline: qemu-system-x86_64 -name debian-2 -m 256 -enable-kvm
    start: 30s
    regions:
      - {size: 200MiB, fill: pool, pool: debian-12}
      - {size: 56MiB, fill: zero}
events:
  - {at: 1m, sysfs: {run: 1}}
  - {at: 2h, rewrite: {process: 1, region: 0, first: 0, pages: 1000, fill: unique}}
  - {at: 3h, exit: 0}
"""


def test_yaml_file(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(EXAMPLE)
    s = load_yaml(path)
    assert s.source == str(path)
    assert s.description == "Two guests of the same OS share their pool pages."
    assert (s.host.memory, s.host.buffers, s.host.cached, s.host.used) == (2 * GiB, 16 * MiB, 128 * MiB, 64 * MiB)
    assert [p.start for p in s.processes] == [0.0, 30.0]
    assert s.processes[0].cmdline == s.processes[1].cmdline[:2] + ("debian-1",) + s.processes[1].cmdline[3:]
    assert [r.pages for r in s.processes[1].regions] == [51200, 14336]
    assert [(e.at, type(e.action)) for e in s.events] == [(60.0, SysfsWrite), (7200.0, Rewrite), (10800.0, ExitProcess)]


def test_yaml_round_trip(tmp_path):
    """Dumping the loaded mapping back to YAML and reading it again gives the same scenario."""
    data = yaml.safe_load(EXAMPLE)
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    first = load_yaml(tmp_path / "again.yaml")
    (tmp_path / "orig.yaml").write_text(EXAMPLE)
    second = load_yaml(tmp_path / "orig.yaml")
    assert (first.host, first.ksm, first.processes, first.events, first.timeline) == (
        second.host, second.ksm, second.processes, second.events, second.timeline)


@pytest.mark.parametrize(
    "text, message",
    [
        ("host: {memory: 1GiB\n", "malformed YAML: line 2, column 1: expected ',' or '}', but got '<stream end>'"),
        ("host:\n  memory: 1GiB\n   cached: 1\n", "malformed YAML: line 3, column 10: mapping values are not allowed here"),
        ("host: {memory: 1GiB}\nprocesses:\n  - name: q\n    regions: [{pages: -5, fill: zero}]\n",
         "processes[0].regions[0].pages: must be >= 0, got -5"),
    ],
)
def test_yaml_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_yaml(path)
    assert str(info.value) == f"{path}: {message}"


def test_deeply_nested_yaml_is_one_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("processes: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ScenarioError) as info:
        load_yaml(path)
    assert str(info.value) == f"{path}: malformed YAML: nested too deeply"


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ScenarioError) as info:
        Simulation.from_yaml(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: no such file"
    with pytest.raises(ScenarioError) as info:
        load_yaml(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a scenario file"


# ---------------------------------------------------------------------------
# Content ids
# ---------------------------------------------------------------------------


def test_content_ids():
    ids = ContentIds()
    zero = ids.contents(Fill("zero"), 0, 4)
    assert zero.dtype == np.int64 and zero.tolist() == [0, 0, 0, 0]
    a = ids.contents(Fill("same", tag="a"), 0, 3)
    b = ids.contents(Fill("same", tag="b"), 5, 2)
    assert len(set(a.tolist())) == 1 and len(set(b.tolist())) == 1 and a[0] != b[0]
    assert ids.contents(Fill("same", tag="a"), 9, 1)[0] == a[0]
    p1 = ids.contents(Fill("pool", pool="deb"), 0, 10)
    p2 = ids.contents(Fill("pool", pool="deb", offset=5), 0, 10)  # entries 5..14
    p3 = ids.contents(Fill("pool", pool="deb"), 3, 4)  # pages 3..6 of a region: entries 3..6
    assert p2[:5].tolist() == p1[5:].tolist()
    assert p3.tolist() == p1[3:7].tolist()
    w = ids.contents(Fill("pool", pool="win"), 0, 10)
    assert not set(w.tolist()) & set(p1.tolist())
    u1 = ids.contents(Fill("unique"), 0, 1000)
    u2 = ids.contents(Fill("unique"), 0, 1000)
    everything = np.concatenate([zero[:1], a[:1], b[:1], p1, p2, w, u1, u2])
    assert len(np.unique(everything)) == 1 + 1 + 1 + 15 + 10 + 2000
    assert 0 not in u1 and 0 not in p1 and 0 not in a
    # ids are dense: 2 tags + 15 + 10 pool entries + 2000 unique pages, numbered from 1
    assert everything.max() == 2 + 15 + 10 + 2000


def test_fill_values_take_their_kinds_defaults_and_only_their_keys():
    assert Fill("pool", pool="p") == Fill("pool", pool="p", offset=0) != Fill("pool", pool="p", offset=1)
    assert (Fill("pool", pool="p").pool, Fill("pool", pool="p").offset, Fill("same", tag="t").tag) == ("p", 0, "t")
    assert repr(Fill("pool", pool="p", offset=3)) == "Fill('pool', pool='p', offset=3)"
    with pytest.raises(AttributeError):
        Fill("zero").tag
    with pytest.raises(TypeError):
        Fill("zero", tag="x")
    with pytest.raises(ValueError):
        Fill("random")
    assert hash(Fill("same", tag="t")) == hash(Fill("same", tag="t"))
    assert copy.deepcopy(Fill("pool", pool="p", offset=2)) == Fill("pool", pool="p", offset=2)


def test_content_ids_use_the_given_allocator():
    handed = []

    def new_ids(n):
        start = 100 + sum(handed)
        handed.append(n)
        return np.arange(start, start + n, dtype=np.int64)

    ids = ContentIds(new_ids)
    assert ids.contents(Fill("pool", pool="p", offset=2), 0, 3).tolist() == [100, 101, 102]
    assert ids.contents(Fill("pool", pool="p"), 0, 5).tolist() == [103, 104, 100, 101, 102]
    assert ids.contents(Fill("unique"), 0, 2).tolist() == [105, 106]
    assert handed == [3, 2, 2]


# ---------------------------------------------------------------------------
# Memory accounting in a running simulation
# ---------------------------------------------------------------------------


def _free_kb(sim) -> int:
    return sim.meminfo_kb()["MemFree"]


def _attr(sim, name) -> int:
    return int(sim.kernel.read_attr(name))


def accounting_scenario(**ksm):
    return {
        "host": {"memory": "1GiB", "used": "64MiB", "buffers": "8MiB", "cached": "32MiB"},
        "ksm": {"pages_to_scan": 1000, "sleep_millisecs": 10, **ksm},
        "processes": [
            {"name": "vm-a", "regions": [{"pages": 3000, "fill": "pool", "pool": "os"},
                                         {"pages": 1000, "fill": "unique"}]},
            {"name": "vm-b", "start": "1m", "regions": [{"pages": 3000, "fill": "pool", "pool": "os"},
                                                         {"pages": 500, "fill": "zero"},
                                                         {"pages": 2000, "fill": "unique", "lazy": True}]},
        ],
        "events": [{"at": "2m", "sysfs": {"run": 1}}],
    }


def test_free_memory_falls_as_guests_start_and_fault_pages_in():
    sim = Simulation(accounting_scenario())
    base_free = (1024 - 64 - 8 - 32) * 1024
    assert _free_kb(sim) == base_free - 4000 * 4
    assert [p.rss_pages for p in sim.processes] == [4000]
    sim.advance(60)
    assert _free_kb(sim) == base_free - (4000 + 3500) * 4  # the lazy region takes nothing yet
    assert [p.rss_pages for p in sim.processes] == [4000, 3500]
    assert [p.vsz_pages for p in sim.processes] == [4000, 5500]
    sim.apply({"touch": {"process": 1, "region": 2, "first": 0, "pages": 1200}})
    assert _free_kb(sim) == base_free - (4000 + 3500 + 1200) * 4
    assert sim.process(1).rss_pages == 4700


def test_free_memory_rises_as_ksm_merges_and_rss_stays():
    sim = Simulation(accounting_scenario())
    sim.advance(120)
    before = _free_kb(sim)
    rss = [p.rss_pages for p in sim.processes]
    sim.run_until(full_scans=3)
    shared, sharing = _attr(sim, "pages_shared"), _attr(sim, "pages_sharing")
    # 3000 pool pages in both guests -> 3000 KSM pages, 3000 sharers; 500 empty pages -> with
    # max_page_sharing 256, a chain of two KSM pages (256 + 244 mappers): 2 shared, 498 sharing
    assert (shared, sharing) == (3002, 3498)
    assert (_attr(sim, "stable_node_chains"), _attr(sim, "stable_node_dups")) == (1, 2)
    assert _free_kb(sim) - before == sharing * 4
    assert [p.rss_pages for p in sim.processes] == rss  # merging does not lower RSS
    assert [p.ksm_merging_pages for p in sim.processes] == [3000, 3500]


def test_zero_pages_free_memory_with_use_zero_pages():
    sim = Simulation(accounting_scenario(use_zero_pages=1))
    sim.advance(120)
    before = _free_kb(sim)
    sim.run_until(full_scans=3)
    assert (_attr(sim, "pages_shared"), _attr(sim, "pages_sharing"), _attr(sim, "ksm_zero_pages")) == (3000, 3000, 500)
    assert _free_kb(sim) - before == (3000 + 500) * 4
    assert sim.process(1).rss_pages == 3000  # pages mapped to the zero page are not resident


def test_rewrite_breaks_copy_on_write_and_exit_frees_memory():
    sim = Simulation(accounting_scenario())
    sim.advance(120)
    sim.run_until(full_scans=3)
    merged_free = _free_kb(sim)
    # vm-b writes new data over 1000 of its shared pool pages: each gets a private copy again
    sim.apply({"rewrite": {"process": 1, "region": 0, "first": 0, "pages": 1000, "fill": "unique"}})
    assert _free_kb(sim) == merged_free - 1000 * 4
    assert sim.process(1).rss_pages == 3500
    # vm-a exits: its 1000 unique pages go; the 3000 pool pages it shared stay as long as vm-b maps them
    # (the 1000 rewritten ones were mapped by vm-a alone by then: they go too)
    sim.apply({"exit": 0})
    assert [p.id for p in sim.processes] == [1]
    assert _free_kb(sim) == merged_free - 1000 * 4 + (1000 + 1000) * 4
    # once vm-b exits too, all guest memory is back
    sim.apply({"exit": 1})
    assert _free_kb(sim) == (1024 - 64 - 8 - 32) * 1024
    assert sim.processes == []


# ---------------------------------------------------------------------------
# Any input: a valid scenario or one ScenarioError, never another exception
# ---------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-5, max_value=5000), st.floats(allow_nan=True),
    st.sampled_from(["", "x", "1GiB", "5m", "-1", "same", "pool", "unique", "zero", "scan-time", "1", "0", "a/b"]),
)
_keys = st.sampled_from([
    "host", "ksm", "processes", "events", "description", "memory", "used", "cached", "buffers", "pid_base",
    "name", "cmdline", "id", "start", "exit", "regions", "pages", "size", "fill", "tag", "pool", "offset",
    "mergeable", "lazy", "mergeable_all", "at", "sysfs", "rewrite", "touch", "process", "region", "first",
    "run", "pages_to_scan", "max_page_sharing", "advisor_mode", "bogus",
])
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=4)), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=5))
def test_arbitrary_input_is_either_valid_or_one_scenario_error(data):
    data.setdefault("host", {"memory": "1GiB"}) if isinstance(data.get("host"), dict) else None
    try:
        load_scenario(data, "fuzz.yaml")
    except ScenarioError as exc:
        message = str(exc)
        assert message.startswith("fuzz.yaml: ") and "\n" not in message


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_valid_scenario_with_one_part_broken_gives_one_scenario_error(data):
    scenario = yaml.safe_load(EXAMPLE)
    scenario["events"].append({"at": "2h30m", "touch": {"process": 1, "region": 1, "first": 5, "pages": 10}})
    paths = [p for p in _paths(scenario) if p]
    path = data.draw(st.sampled_from(paths))
    parent = scenario
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        parent[data.draw(_keys)] = parent.pop(path[-1])  # rename the key
    else:
        parent[path[-1]] = data.draw(_values)  # replace the value
    try:
        load_scenario(scenario, "fuzz.yaml")
    except ScenarioError as exc:
        message = str(exc)
        assert message.startswith("fuzz.yaml: ") and "\n" not in message
