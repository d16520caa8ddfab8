"""The kernel's string-to-number and string-compare rules used by sysfs stores.

Inputs are C strings: ``bytes`` that end at the first NUL. Failures raise
``OSError`` carrying the errno the kernel function returns (EINVAL or ERANGE).
Behaviour (learned from Linux 6.18, verified on the real kernel by
tools/probe_ksm_conformance.py):

* unsigned parsers accept an optional leading ``+``, then one or more decimal
  digits (leading zeros allowed, no ``0x``, no spaces), then at most one
  ``\\n``, then the end of the string;
* overflow of 64 bits is detected while reading digits, so it wins over trailing
  garbage: ``99999999999999999999x`` is ERANGE, not EINVAL;
* narrower types (unsigned int, int) answer ERANGE when the 64-bit value does
  not fit;
* the signed parsers take one leading ``-`` (and ``-0`` is 0); ``+`` after ``-``
  is not accepted;
* ``kstrtobool`` looks only at the first character (or two, for ``on``/``off``).
"""

from __future__ import annotations

import errno
import os

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
S64_MAX = (1 << 63) - 1
S32_MAX = (1 << 31) - 1
S32_MIN = -(1 << 31)


def kernel_error(code: int) -> OSError:
    """An OSError as the kernel's -code would reach user space."""
    return OSError(code, os.strerror(code))


def c_string(data: bytes) -> bytes:
    """The part of a buffer a C string function sees (up to the first NUL)."""
    end = data.find(b"\0")
    return data if end < 0 else data[:end]


def _kstrtoull_unsigned_digits(s: bytes) -> int:
    """Digits, optional single newline, end; no sign handling."""
    value = 0
    used = 0
    overflow = False
    for byte in s:
        if not 0x30 <= byte <= 0x39:
            break
        value = value * 10 + (byte - 0x30)
        if value > U64_MAX:
            overflow = True
            value &= U64_MAX
        used += 1
    if overflow:
        raise kernel_error(errno.ERANGE)
    if used == 0:
        raise kernel_error(errno.EINVAL)
    rest = s[used:]
    if rest[:1] == b"\n":
        rest = rest[1:]
    if rest:
        raise kernel_error(errno.EINVAL)
    return value


def kstrtoull(data: bytes) -> int:
    """Base-10 kstrtoull: optional '+', digits, optional one '\\n'."""
    s = c_string(data)
    if s[:1] == b"+":
        s = s[1:]
    return _kstrtoull_unsigned_digits(s)


kstrtoul = kstrtoull  # unsigned long is 64 bits on the reference machine


def kstrtouint(data: bytes) -> int:
    value = kstrtoull(data)
    if value > U32_MAX:
        raise kernel_error(errno.ERANGE)
    return value


def kstrtoll(data: bytes) -> int:
    s = c_string(data)
    if s[:1] == b"-":
        magnitude = _kstrtoull_unsigned_digits(s[1:])
        if magnitude > S64_MAX + 1:
            raise kernel_error(errno.ERANGE)
        return -magnitude
    value = kstrtoull(s)
    if value > S64_MAX:
        raise kernel_error(errno.ERANGE)
    return value


def kstrtoint(data: bytes) -> int:
    value = kstrtoll(data)
    if not S32_MIN <= value <= S32_MAX:
        raise kernel_error(errno.ERANGE)
    return value


def kstrtobool(data: bytes) -> bool:
    """y/Y/t/T/1 -> True, n/N/f/F/0 -> False, on/off (any case); else EINVAL."""
    s = c_string(data)
    first = s[:1].lower()
    if first in (b"y", b"t", b"1"):
        return True
    if first in (b"n", b"f", b"0"):
        return False
    if first == b"o":
        second = s[1:2].lower()
        if second == b"n":
            return True
        if second == b"f":
            return False
    raise kernel_error(errno.EINVAL)


def sysfs_streq(word: bytes, data: bytes) -> bool:
    """Equal as C strings, ignoring one trailing newline on either side."""
    a, b = c_string(word), c_string(data)
    return a == b or a + b"\n" == b or a == b + b"\n"
