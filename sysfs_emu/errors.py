"""The errors sysfs_emu reports to a user, and how it words failures it meets.

Every error a user can cause or fix is an :class:`EmuError` with a one-line
message; ``sysfs-emu``'s command line catches it once and prints
``sysfs-emu: error: <message>``. The simulated kernel is the exception on
purpose: like Linux it answers a refused write with an ``OSError`` carrying the
errno, and :func:`errno_text` words that errno for messages.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os

__all__ = [
    "EmuError",
    "SysfsEmuError",
    "ScenarioError",
    "SimulationError",
    "TreeError",
    "ServeError",
    "SnapshotError",
    "errno_text",
    "one_line",
    "OnceLog",
]


class EmuError(Exception):
    """Base of the errors sysfs_emu reports to a user (one line, no traceback needed)."""


SysfsEmuError = EmuError  # the name sysfs_emu exported first


class ScenarioError(EmuError):
    """A scenario (or an event given to ``Simulation.apply``) that is not valid."""


class SimulationError(ScenarioError):
    """The simulation cannot do what was asked (a refused event, a goal ksmd cannot reach, out of memory)."""


class MemoryError_(EmuError, ValueError):
    """A request the simulated memory cannot honour (bad pid, region, contents)."""


class TreeError(EmuError):
    """The file tree cannot be created under this root; the message says why."""


class ServeError(EmuError):
    """The root cannot be served, or the served simulation cannot be reached; the message says why."""


class SnapshotError(EmuError):
    """Nothing to show under this root; the message says why."""


def errno_text(code: int | None) -> str:
    """An errno as messages show it: ``EINVAL (Invalid argument)``."""
    code = code or 0
    return f"{errno_mod.errorcode.get(code, str(code))} ({os.strerror(code)})"


def one_line(exc: BaseException) -> str:
    """An error's message on one line, whitespace runs (newlines included) made single spaces."""
    return " ".join(str(exc).split())


class OnceLog:
    """Logs a repeating failure once per change of its message, and once more when it is over.

    ``fail(key, message)`` logs at ``level`` only when ``key`` was fine or failed
    with another message; ``ok(key, message)`` logs at INFO only when ``key`` was
    failing. A loop that meets the same problem every tick so writes two lines,
    not one a tick.
    """

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING) -> None:
        self.logger = logger
        self.level = level
        self._failing: dict[object, str] = {}

    def fail(self, key: object, message: str) -> None:
        if self._failing.get(key) != message:
            self._failing[key] = message
            self.logger.log(self.level, "%s", message)

    def ok(self, key: object, message: str) -> None:
        if self._failing.pop(key, None) is not None:
            self.logger.info("%s", message)

    def failing(self, key: object) -> bool:
        """Whether ``key`` is failing now (its failure was logged and not yet its recovery)."""
        return key in self._failing

    def forget(self, key: object) -> None:
        """Drop ``key`` silently (the thing it named is gone)."""
        self._failing.pop(key, None)
