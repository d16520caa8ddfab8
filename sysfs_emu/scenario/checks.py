"""Checking one value at a named place: the vocabulary of every scenario error message.

A message names the file and the place, then says what is wrong::

    scenario.yaml: processes[1].regions[0].pages: must be >= 0, got -5
"""

from __future__ import annotations

from typing import Any

from sysfs_emu.errors import ScenarioError
from sysfs_emu.units import UnitError, parse_duration, parse_size


def message(source: str, where: str, text: str) -> str:
    """``source: where: text``, or ``source: text`` for the whole scenario."""
    return f"{source}: {where}: {text}" if where else f"{source}: {text}"


def join(where: str, key: str) -> str:
    """The place of ``key`` inside ``where``: ``processes[0]`` + ``name`` = ``processes[0].name``."""
    return f"{where}.{key}" if where else key


def show(value: Any) -> str:
    """A value as messages quote it: containers by their kind, the rest by repr."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class Checker:
    """Checks values of one scenario; each failure is a ScenarioError naming ``source`` and the place."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, text: str) -> ScenarioError:
        return ScenarioError(message(self.source, where, text))

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...], what: str = "a mapping") -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be {what}, got {show(value)}")
        for key in value:
            if not isinstance(key, str) or key not in allowed:
                raise self.fail(join(where, str(key)), f"unknown key (expected one of: {', '.join(allowed)})")
        return value

    def listing(self, value: Any, where: str) -> list:
        """A list; a missing (null) one is empty."""
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, f"must be a list, got {show(value)}")
        return value

    def integer(self, value: Any, where: str, minimum: int | None = None, maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"must be a whole number, got {show(value)}")
        if minimum is not None and value < minimum:
            raise self.fail(where, f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.fail(where, f"must be <= {maximum}, got {value}")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"must be true or false, got {show(value)}")
        return value

    def string(self, value: Any, where: str, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"must be a string, got {show(value)}")
        if not allow_empty and not value:
            raise self.fail(where, "must not be empty")
        return value

    def name(self, raw: dict, key: str, where: str, why: str) -> str:
        """``raw[key]``, a non-empty string or a number (as a string), that names something."""
        if key not in raw:
            raise self.fail(join(where, key), f"missing ({why})")
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise self.fail(join(where, key), f"must be a non-empty string or a number, got {show(value)}")
        return str(value)

    def size(self, value: Any, where: str) -> int:
        try:
            return parse_size(value)
        except UnitError as exc:
            raise self.fail(where, str(exc)) from None

    def duration(self, value: Any, where: str) -> float:
        try:
            return parse_duration(value)
        except UnitError as exc:
            raise self.fail(where, str(exc)) from None
