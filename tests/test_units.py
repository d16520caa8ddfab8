"""Sizes and durations as scenarios write them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ksmtuned_py.report import human_bytes
from sysfs_emu.units import UnitError, format_clock, format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    "text, expected",
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        (4096.0, 4096),
        ("12B", 12),
        ("4KiB", 4096),
        ("4K", 4096),
        ("512MiB", 512 * 2**20),
        ("512M", 512 * 2**20),
        ("8GiB", 8 * 2**30),
        ("8G", 8 * 2**30),
        ("2TiB", 2 * 2**40),
        ("1PiB", 2**50),
        ("1.5GiB", 1536 * 2**20),
        (".5KiB", 512),
        ("8 GiB", 8 * 2**30),
        ("  1MiB ", 2**20),
        ("1kB", 1000),
        ("1KB", 1000),
        ("1MB", 10**6),
        ("8GB", 8 * 10**9),
        ("1TB", 10**12),
        ("1.5B", 1),  # cut to a whole byte
        ("0.1KiB", 102),
    ],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("8gib", "unknown size unit 'gib' in '8gib' (use B, KiB, MiB, GiB, TiB, K, M, G, T, or kB, MB, GB, TB)"),
        ("8Gb", "unknown size unit 'Gb' in '8Gb' (use B, KiB, MiB, GiB, TiB, K, M, G, T, or kB, MB, GB, TB)"),
        ("-1", "a size cannot be negative, got '-1'"),
        ("-1GiB", "a size cannot be negative, got '-1GiB'"),
        (-5, "a size cannot be negative, got -5"),
        ("", "not a size: '' (write e.g. 4096, '512MiB', '8GiB')"),
        ("GiB", "not a size: 'GiB' (write e.g. 4096, '512MiB', '8GiB')"),
        ("1.2.3G", "not a size: '1.2.3G' (write e.g. 4096, '512MiB', '8GiB')"),
        ("0x10", "not a size: '0x10' (write e.g. 4096, '512MiB', '8GiB')"),
        ("1e3", "not a size: '1e3' (write e.g. 4096, '512MiB', '8GiB')"),
        (1.5, "a size without a unit is whole bytes, got 1.5"),
        (True, "a size is a number of bytes or a string like '8GiB', got True"),
        (None, "a size is a number of bytes or a string like '8GiB', got None"),
        ([1], "a size is a number of bytes or a string like '8GiB', got [1]"),
        (float("nan"), "not a size: nan"),
        ("\u0663GiB", "not a size: '\u0663GiB' (write e.g. 4096, '512MiB', '8GiB')"),  # Arabic-Indic three
    ],
)
def test_bad_sizes(value, message):
    with pytest.raises(UnitError) as info:
        parse_size(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "text, expected",
    [
        (0, 0.0),
        (90, 90.0),
        (0.5, 0.5),
        ("90", 90.0),
        ("2.5", 2.5),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.5h", 5400.0),
        ("1h30m", 5400.0),
        ("1d 2h", 93600.0),
        ("1m30s500ms", 90.5),
        (" 10s ", 10.0),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


_DURATION_HINT = "(write seconds, or e.g. '250ms', '30s', '5m', '2h', '1d', '1h30m')"


@pytest.mark.parametrize(
    "value, message",
    [
        ("30x", f"not a duration: '30x' {_DURATION_HINT}"),
        ("1h 30", f"not a duration: '1h 30' {_DURATION_HINT}"),
        ("s", f"not a duration: 's' {_DURATION_HINT}"),
        ("", f"not a duration: '' {_DURATION_HINT}"),
        ("5 min", f"not a duration: '5 min' {_DURATION_HINT}"),
        ("-5s", "a duration cannot be negative, got '-5s'"),
        (-1, "a duration cannot be negative, got -1"),
        (True, "a duration is a number of seconds or a string like '30s', got True"),
        ({"s": 1}, "a duration is a number of seconds or a string like '30s', got {'s': 1}"),
        (float("inf"), "not a duration: inf"),
        ("\u0661\u0660s", f"not a duration: '\u0661\u0660s' {_DURATION_HINT}"),  # Arabic-Indic digits: not ours
        ("1\u00b2s", f"not a duration: '1\u00b2s' {_DURATION_HINT}"),  # a superscript two passes isdigit()
    ],
)
def test_bad_durations(value, message):
    with pytest.raises(UnitError) as info:
        parse_duration(value)
    assert str(info.value) == message


def test_unit_error_is_a_value_error():
    assert issubclass(UnitError, ValueError)


@pytest.mark.parametrize(
    "nbytes, text", [(0, "0B"), (4097, "4097B"), (4096, "4KiB"), (8 * 2**30, "8GiB"), (1536 * 2**20, "1536MiB")]
)
def test_format_size(nbytes, text):
    assert format_size(nbytes) == text


@pytest.mark.parametrize(
    "seconds, text", [(0, "0s"), (0.25, "0.25s"), (59, "59s"), (5400, "1h30m"), (90061.5, "1d1h1m1.5s"), (86400, "1d")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "seconds, text", [(0, "00:00:00"), (59.9, "00:00:59"), (3725, "01:02:05"), (86399, "23:59:59"),
                      (86400, "1d 00:00:00"), (2 * 86400 + 3600 + 61, "2d 01:01:01")]
)
def test_format_clock(seconds, text):
    assert format_clock(seconds) == text


@pytest.mark.parametrize(
    "nbytes, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1288490188, "1.2 GiB"),
                     (-12288, "-12.0 KiB"), (5 * 1024**5, "5120.0 TiB")]
)
def test_human_bytes_shared_by_status_demo_snapshot_and_simulate(nbytes, text):
    assert human_bytes(nbytes) == text


@given(st.integers(min_value=0, max_value=2**60))
def test_size_round_trip(nbytes):
    assert parse_size(format_size(nbytes)) == nbytes


@given(st.integers(min_value=0, max_value=10**8), st.integers(min_value=0, max_value=999))
def test_duration_round_trip(whole, millis):
    seconds = whole + millis / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize("ratio, text", [(1970.4, "1970x"), (100.0, "100x"), (59.83, "59.8x"), (0.5, "0.5x"),
                                         (123456.7, "123457x")])
def test_speeds_are_plain_numbers(ratio, text):
    from sysfs_emu.cli import format_speed

    assert format_speed(ratio) == text
