"""Cost profiles: ksmd's CPU costs per page as a file, and the reference profile used without one.

A profile is a small JSON file written by ``sysfs-emu calibrate`` (which
measures them on the machine it runs on, see sysfs_emu/realksm/calibrate.py)::

    {"format": "sysfs-emu cost profile", "version": 1,
     "origin": "calibrated on host1 (Linux 6.18.4, AMD EPYC) on 2026-12-01",
     "costs_us": {"ksm_page": 0.37, "skipped": 0.3, "checksum": 1.0, "tree_base": 4.7,
                  "tree_per_level": 0.75, "merge": 1.5, "split": 700.0, "batch": 2.0},
     "measured": {...}}

Costs are in microseconds (see :class:`sysfs_emu.ksmd.CostModel` for what
each one is); ``measured`` is what calibrate saw, kept for the record.
``sysfs-emu run`` and ``simulate`` take one with ``--costs FILE``, the Python
API as ``Simulation(..., costs=FILE)``; every output that shows simulated time
or ksmd CPU names the profile (``CostModel.origin``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields, replace
from pathlib import Path

from sysfs_emu.errors import EmuError
from sysfs_emu.ksmd.timing import CostModel

FORMAT = "sysfs-emu cost profile"
VERSION = 1
COSTS = tuple(f.name for f in fields(CostModel) if f.name != "origin")
MAX_COST_US = 1e6  # a second per page is no machine's


class CostProfileError(EmuError):
    """A cost profile that cannot be read or is not one."""


def reference() -> CostModel:
    """The recorded reference profile (measured on Linux 6.18 on the development machine)."""
    return CostModel()


def to_json(model: CostModel, measured: dict | None = None) -> str:
    """The text of a profile file for ``model``."""
    data = {
        "format": FORMAT,
        "version": VERSION,
        "origin": model.origin,
        "costs_us": {name: round(getattr(model, name) * 1e6, 4) for name in COSTS},
        "measured": measured or {},
    }
    return json.dumps(data, indent=2) + "\n"


def save(model: CostModel, path: str | os.PathLike, measured: dict | None = None) -> None:
    """Write ``model`` as a profile file (replacing ``path`` at once, never half-written)."""
    from sysfs_emu.files import replace_file

    path = Path(path)
    try:
        replace_file(path, to_json(model, measured).encode(), tmp=path.with_name(f".{path.name}.tmp"))
    except OSError as exc:
        raise CostProfileError(f"cannot write the cost profile {path}: {exc.strerror}") from None


def load(path: str | os.PathLike) -> CostModel:
    """The cost model of a profile file; CostProfileError names the file and the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CostProfileError(f"{path}: no such cost profile") from None
    except IsADirectoryError:
        raise CostProfileError(f"{path}: is a directory, not a cost profile") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CostProfileError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except ValueError as exc:
        raise CostProfileError(f"{path}: not a cost profile (not JSON: {exc})") from None
    return from_data(data, str(path))


def from_data(data, source: str) -> CostModel:
    """A cost model from a profile's parsed JSON ``data``."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CostProfileError(f"{source}: not a cost profile (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise CostProfileError(f"{source}: cost profile version {data.get('version')!r}, this sysfs-emu reads {VERSION}")
    costs = data.get("costs_us")
    if not isinstance(costs, dict):
        raise CostProfileError(f"{source}: costs_us: must be a mapping of cost names to microseconds")
    unknown = sorted(set(costs) - set(COSTS))
    if unknown:
        raise CostProfileError(f"{source}: costs_us.{unknown[0]}: unknown cost (expected: {', '.join(COSTS)})")
    values = {}
    for name, value in costs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= MAX_COST_US:
            raise CostProfileError(f"{source}: costs_us.{name}: must be microseconds from 0 to {MAX_COST_US:g}, "
                                   f"got {value!r}")
        values[name] = value * 1e-6
    origin = data.get("origin")
    described = f"calibrated profile {source}" + (f" ({origin})" if isinstance(origin, str) and origin else "")
    return replace(CostModel(), **values, origin=described)


def resolve(costs) -> CostModel:
    """A cost model from what the API and commands take: None (the reference), a CostModel, or a file path."""
    if costs is None:
        return reference()
    if isinstance(costs, CostModel):
        return costs
    if isinstance(costs, (str, os.PathLike)):
        return load(costs)
    raise TypeError(f"costs must be a CostModel, a profile file or None, got {type(costs).__name__}")
