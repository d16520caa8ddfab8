"""Sizes and durations as written in scenarios: ``512MiB``, ``8GiB``, ``30s``, ``1.5h``.

Sizes (:func:`parse_size`, result in bytes):

- a plain non-negative integer (YAML ``4096``) or a digit string (``"4096"``) is bytes;
- binary suffixes, powers of 1024: ``KiB MiB GiB TiB PiB`` and their one-letter
  forms ``K M G T P`` (as qemu's ``-m 8G`` and systemd use them);
- decimal (SI) suffixes, powers of 1000: ``kB KB MB GB TB PB``;
- ``B`` for bytes;
- the number may have a fraction (``1.5GiB``); the result is cut to a whole byte.

Suffixes are case-sensitive except that ``KB``/``kB`` are both accepted, and a
space between number and unit is allowed (``8 GiB``).

Durations (:func:`parse_duration`, result in seconds as a float):

- a plain non-negative number (YAML ``90``, ``0.5``) or numeric string is seconds;
- one or more ``<number><unit>`` parts, units ``ms s m h d``
  (``30s``, ``5m``, ``2h``, ``1d``, ``1.5h``, ``1h30m``, ``250ms``).

Both raise :class:`UnitError` (a ``ValueError``) with a message that quotes the
rejected input.
"""

from __future__ import annotations

import re
from fractions import Fraction

from sysfs_emu.errors import EmuError

__all__ = ["UnitError", "parse_size", "parse_duration", "format_size", "format_duration", "format_clock", "describe_size",
           "format_bytes"]


class UnitError(EmuError, ValueError):
    """A size or duration that cannot be parsed; the message quotes the input."""


_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "B": 1,
    "K": 1024,
    "KiB": 1024,
    "M": 1024**2,
    "MiB": 1024**2,
    "G": 1024**3,
    "GiB": 1024**3,
    "T": 1024**4,
    "TiB": 1024**4,
    "P": 1024**5,
    "PiB": 1024**5,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "PB": 1000**5,
}

_TIME_UNITS: dict[str, Fraction] = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
}

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"  # ASCII digits only: int() would take "١٠" too
_SIZE_RE = re.compile(rf"\s*({_NUMBER})\s*([A-Za-z]*)\s*", re.ASCII)
_TIME_PART_RE = re.compile(rf"\s*({_NUMBER})\s*(ms|s|m|h|d)", re.ASCII)


def _is_number(value: object) -> bool:
    # bool is an int subclass: YAML "yes"/"true" must not read as 1.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_or_text(value: object, what: str, hint: str) -> int | float | str:
    """A finite non-negative number as is, or a string stripped; UnitError naming ``what`` otherwise."""
    if _is_number(value):
        if value != value or value in (float("inf"), float("-inf")):
            raise UnitError(f"not a {what}: {value!r}")
        if value < 0:
            raise UnitError(f"a {what} cannot be negative, got {value!r}")
        return value
    if not isinstance(value, str):
        raise UnitError(f"a {what} is {hint}, got {value!r}")
    text = value.strip()
    if text.startswith("-"):
        raise UnitError(f"a {what} cannot be negative, got {value!r}")
    return text


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as ``"512MiB"``, ``"8G"``, ``"1.5GB"``."""
    text = _number_or_text(value, "size", "a number of bytes or a string like '8GiB'")
    if not isinstance(text, str):
        if isinstance(text, float) and not text.is_integer():
            raise UnitError(f"a size without a unit is whole bytes, got {value!r}")
        return int(text)
    match = _SIZE_RE.fullmatch(text)
    if not match:
        raise UnitError(f"not a size: {value!r} (write e.g. 4096, '512MiB', '8GiB')")
    number, unit = match.groups()
    if unit not in _SIZE_UNITS:
        raise UnitError(
            f"unknown size unit {unit!r} in {value!r} "
            "(use B, KiB, MiB, GiB, TiB, K, M, G, T, or kB, MB, GB, TB)"
        )
    return int(Fraction(number) * _SIZE_UNITS[unit])


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``"30s"``, ``"5m"``, ``"1h30m"``."""
    text = _number_or_text(value, "duration", "a number of seconds or a string like '30s'")
    if not isinstance(text, str):
        return float(text)
    if re.fullmatch(_NUMBER, text):
        return float(Fraction(text))
    total = Fraction(0)
    pos = 0
    for match in _TIME_PART_RE.finditer(text):
        if match.start() != pos:
            break
        total += Fraction(match.group(1)) * _TIME_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise UnitError(
            f"not a duration: {value!r} (write seconds, or e.g. '250ms', '30s', '5m', '2h', '1d', '1h30m')"
        )
    return float(total)


def format_size(nbytes: int) -> str:
    """The shortest exact binary spelling of a size: ``8GiB``, ``1536MiB``, ``4097B``."""
    for unit in ("PiB", "TiB", "GiB", "MiB", "KiB"):
        factor = _SIZE_UNITS[unit]
        if nbytes and nbytes % factor == 0:
            return f"{nbytes // factor}{unit}"
    return f"{nbytes}B"


def format_duration(seconds: float) -> str:
    """A compact spelling of a duration that :func:`parse_duration` reads back: ``1h30m``, ``2.5s``."""
    if seconds < 0:
        raise UnitError(f"a duration cannot be negative, got {seconds!r}")
    whole = int(seconds)
    frac = seconds - whole
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    if whole or frac or not parts:
        secs = whole + frac
        parts.append(("%.9f" % secs).rstrip("0").rstrip(".") + "s" if frac else f"{whole}s")
    return "".join(parts)


def format_clock(seconds: float) -> str:
    """Simulated time on a clock, whole seconds: ``00:05:07``, ``1d 02:00:00``."""
    d, s = divmod(int(seconds), 86400)
    return (f"{d}d " if d else "") + f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def describe_size(nbytes: int) -> str:
    """A size for messages: exact when round (``8GiB``), else 3 significant digits (``1.14GiB``)."""
    exact = format_size(nbytes)
    if exact.endswith("B") and not exact.endswith("iB") or len(exact) > 7:
        for unit in ("PiB", "TiB", "GiB", "MiB", "KiB"):
            factor = _SIZE_UNITS[unit]
            if nbytes >= factor:
                return f"{nbytes / factor:.3g}{unit}"
    return exact


def format_bytes(nbytes: int | float) -> str:
    """A size for reports, as ksmtuned-py's status prints them: ``512 B``, ``1.2 GiB``, ``-12.0 KiB``."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
