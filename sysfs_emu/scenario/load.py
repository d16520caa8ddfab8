"""Loading a scenario: YAML text or a mapping in, a validated :class:`Scenario` or one ScenarioError out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from sysfs_emu.errors import ScenarioError
from sysfs_emu.scenario.checks import Checker
from sysfs_emu.scenario.model import Event, Scenario
from sysfs_emu.scenario.parse import TOP_KEYS, parse_host, parse_process, parse_sysfs_writes
from sysfs_emu.scenario.parse import parse_event as _parse_event
from sysfs_emu.scenario.timeline import assign_ids, build_timeline, check_ksm_writes

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when present: 20x faster


class MalformedYaml(ScenarioError):
    """Text that is not YAML; the message is the place and the problem (``line 2, column 1: ...``)."""


def parse_yaml(text: str) -> Any:
    """The data in YAML ``text``; raises :class:`MalformedYaml` with the first problem's line and column."""
    try:
        try:
            return yaml.load(text, Loader=_YAML_LOADER)
        except yaml.YAMLError:
            # Parse again with PyYAML's own parser for its clearer, stable messages.
            return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise MalformedYaml(f"{where}{problem}") from None
    except RecursionError:
        # PyYAML builds nested collections recursively; a few thousand levels exhaust the stack.
        raise MalformedYaml("nested too deeply") from None
    except UnicodeEncodeError as exc:
        # libyaml encodes the text to UTF-8: a lone surrogate (a byte that was not UTF-8) cannot be
        raise MalformedYaml(f"character {exc.start + 1} is not text (a byte that is not UTF-8)") from None


def load_scenario(data: Any, source: str = "scenario") -> Scenario:
    """Validate a scenario mapping (e.g. from YAML) and return it; raises ScenarioError."""
    c = Checker(source)
    data = {} if data is None else data
    c.mapping(data, "", TOP_KEYS, what="a mapping with host, ksm, processes, events")
    description = c.string(data.get("description", ""), "description", allow_empty=True)
    host = parse_host(c, data.get("host"))
    ksm: tuple[tuple[str, str], ...] = ()
    if data.get("ksm") not in (None, {}):
        ksm = parse_sysfs_writes(c, data["ksm"], "ksm")
        check_ksm_writes(c, ksm)
    processes = [parse_process(c, raw, f"processes[{i}]", i, None)
                 for i, raw in enumerate(c.listing(data.get("processes"), "processes"))]
    events = [_parse_event(c, raw, f"events[{i}]") for i, raw in enumerate(c.listing(data.get("events"), "events"))]
    events = assign_ids(c, host, processes, events)
    timeline = build_timeline(c, host, processes, events)
    return Scenario(source=source, host=host, ksm=ksm, processes=tuple(processes), events=tuple(events),
                    timeline=tuple(timeline), description=description)


def load_yaml(path: str | os.PathLike) -> Scenario:
    """Read and validate a YAML scenario file; every problem is a ScenarioError naming the file."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise ScenarioError(f"{source}: is a directory, not a scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{source}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = parse_yaml(text)
    except MalformedYaml as exc:
        raise ScenarioError(f"{source}: malformed YAML: {exc}") from None
    return load_scenario(data, source)


def parse_event(data: Any, source: str = "event", now: float = 0.0) -> Event:
    """Validate one event mapping (``at`` optional, default ``now``); references are checked by the caller."""
    return _parse_event(Checker(source), data, "", now=now)
