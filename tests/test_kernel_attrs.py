"""sysfs_emu.Kernel against the conformance table recorded on the real Linux 6.18 kernel."""

from __future__ import annotations

import errno
import json
from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sysfs_emu import kstrto
from sysfs_emu.kernel import COUNTERS, FILES, TUNABLES, Kernel
from tools import probe_ksm_conformance as probe

TABLE = probe.load_table()
DEFAULTS = TABLE["defaults"]


def _groups() -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for entry in TABLE["rows"]:
        groups[f"{entry['file']}-{entry['state']}"].append(entry)
    return dict(groups)


GROUPS = _groups()


def test_table_was_recorded_on_the_reference_kernel():
    assert TABLE["kernel"].startswith("6.18.")
    assert TABLE["page_size"] == 4096
    assert TABLE["config"]["CONFIG_NUMA"] == "y"
    assert sorted(DEFAULTS) == sorted(FILES)
    assert len(FILES) == 24
    assert len(TABLE["rows"]) > 2000
    # every writable file, every read-only file, and every state is covered
    covered = {(e["file"], e["state"]) for e in TABLE["rows"]}
    assert {f for f, _ in covered} == set(FILES) | {"no_such_file"}
    assert {s for _, s in covered} == {"none", "unique", "zero", "shared"}


def test_defaults_match_a_fresh_real_kernel():
    assert Kernel().read_all() == DEFAULTS


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_simulator_matches_table(group):
    entries = GROUPS[group]
    mismatches = probe.sim_differences([probe.row_from_json(e) for e in entries], entries, DEFAULTS)
    assert not mismatches, f"{len(mismatches)} rows differ:\n" + "\n".join(mismatches[:20])


def test_table_run2_zeroes_counters_but_not_pages_scanned_or_skipped():
    """What the engine must do on run=2 (recorded for the memory model)."""
    unmerges = [e for e in TABLE["rows"] if e["file"] == "run" and e["state"] != "none"
                and e["input"] == "2" and e["counters_before"]["full_scans"] > 0]
    assert {e["state"] for e in unmerges} == {"unique", "zero", "shared"}
    for entry in unmerges:
        before, after = entry["counters_before"], entry["counters_after"]
        assert after["pages_scanned"] == before["pages_scanned"] > 0
        assert after["pages_skipped"] == before["pages_skipped"]
        kept = ("pages_scanned", "pages_skipped")
        assert {k: v for k, v in after.items() if k not in kept} == dict.fromkeys(
            [k for k in COUNTERS if k not in kept], 0)


# ---- engine wiring -------------------------------------------------------------------


class FakeEngine:
    def __init__(self, busy: bool = False, **counters: int) -> None:
        self._busy = busy
        self.values = dict.fromkeys(COUNTERS, 0) | counters
        self.calls: list[str] = []

    def counters(self) -> dict[str, int]:
        return dict(self.values)

    def busy(self) -> bool:
        self.calls.append("busy")
        return self._busy

    def unmerge_all(self) -> None:
        self.calls.append("unmerge_all")
        self._busy = False

    def advisor_reset(self) -> None:
        self.calls.append("advisor_reset")


def test_counters_come_from_the_engine_with_signed_text():
    kernel = Kernel(FakeEngine(general_profit=-4096, full_scans=7, pages_sharing=3))
    assert kernel.read_attr("general_profit") == "-4096\n"
    assert kernel.read_attr("full_scans") == "7\n"
    assert kernel.read_attr("pages_sharing") == "3\n"
    assert kernel.read_attr("pages_shared") == "0\n"
    assert Kernel().read_attr("pages_sharing") == "0\n"


@pytest.mark.parametrize("name,value", [("max_page_sharing", "300"), ("merge_across_nodes", "0")])
def test_ebusy_only_when_the_value_changes_while_shared(name, value):
    engine = FakeEngine(busy=True)
    kernel = Kernel(engine)
    old = kernel.read_attr(name)
    kernel.write_attr(name, old)  # the same value: accepted, the engine is not asked
    assert engine.calls == []
    with pytest.raises(OSError) as exc:
        kernel.write_attr(name, value)
    assert exc.value.errno == errno.EBUSY
    assert kernel.read_attr(name) == old
    assert engine.calls == ["busy"]
    with pytest.raises(OSError) as exc:  # parse errors come before the busy check
        kernel.write_attr(name, "x")
    assert exc.value.errno == errno.EINVAL
    assert engine.calls == ["busy"]
    kernel.write_attr("run", "2")  # unmerging frees them
    kernel.write_attr(name, value)
    assert kernel.read_attr(name) == value + "\n"


def test_run2_unmerges_only_on_a_change_to_2():
    engine = FakeEngine()
    kernel = Kernel(engine)
    kernel.write_attr("run", "1")
    assert engine.calls == []
    kernel.write_attr("run", "2\n")
    assert engine.calls == ["unmerge_all"]
    kernel.write_attr("run", "2")  # already 2: nothing to do
    assert engine.calls == ["unmerge_all"]
    with pytest.raises(OSError):
        kernel.write_attr("run", "3")
    kernel.write_attr("run", "0")
    kernel.write_attr("run", b"2")
    assert engine.calls == ["unmerge_all", "unmerge_all"]
    assert kernel.run == 2


def test_advisor_mode_switch_resets_pages_to_scan_and_the_advisor():
    engine = FakeEngine()
    kernel = Kernel(engine)
    kernel.write_attr("pages_to_scan", "1234")
    kernel.write_attr("advisor_mode", "none")  # unchanged: no reset
    assert kernel.pages_to_scan == 1234 and engine.calls == []
    kernel.write_attr("advisor_min_pages_to_scan", str(2**32 + 9))
    kernel.write_attr("advisor_mode", "scan-time\n")
    assert kernel.read_attr("advisor_mode") == "none [scan-time]\n"
    assert kernel.read_attr("pages_to_scan") == "9\n"
    assert engine.calls == ["advisor_reset"]
    kernel.pages_to_scan = 4321  # the advisor (engine) tunes it directly
    assert kernel.read_attr("pages_to_scan") == "4321\n"
    with pytest.raises(OSError) as exc:
        kernel.write_attr("pages_to_scan", "100")
    assert exc.value.errno == errno.EINVAL
    kernel.write_attr("advisor_mode", "none")
    assert kernel.read_attr("pages_to_scan") == "100\n"
    assert engine.calls == ["advisor_reset", "advisor_reset"]


# ---- write(2) edges --------------------------------------------------------------


def test_errors_are_oserrors_with_the_kernel_errno_and_message():
    kernel = Kernel()
    for name, data, code in [
        ("no_such_file", "1", errno.ENOENT),
        ("pages_shared", "1", errno.EACCES),
        ("pages_shared", "", errno.EACCES),
        ("run", "3", errno.EINVAL),
        ("max_page_sharing", "2147483648", errno.ERANGE),
    ]:
        with pytest.raises(OSError) as exc:
            kernel.write_attr(name, data)
        assert exc.value.errno == code
        assert exc.value.strerror == __import__("os").strerror(code)
    with pytest.raises(OSError) as exc:
        kernel.read_attr("../run")
    assert exc.value.errno == errno.ENOENT


def test_write_returns_bytes_accepted_and_sees_one_page_as_a_c_string():
    kernel = Kernel()
    assert kernel.write_attr("sleep_millisecs", "") == 0
    assert kernel.write_attr("sleep_millisecs", b"5\0garbage") == 9
    assert kernel.sleep_millisecs == 5
    long = b"0" * 4095 + b"7" + b"not seen"
    assert kernel.write_attr("sleep_millisecs", long) == 4096
    assert kernel.read_attr("sleep_millisecs") == "7\n"
    assert kernel.write_attr("smart_scan", "no thanks") == 9
    assert kernel.read_attr("smart_scan") == "0\n"


def test_write_all_writes_the_rest_as_a_new_value_like_a_buffered_writer():
    kernel = Kernel()
    kernel.write_all("sleep_millisecs", "0" * 4095 + "7" + "9")
    assert kernel.read_attr("sleep_millisecs") == "9\n"
    with pytest.raises(OSError) as exc:
        kernel.write_all("sleep_millisecs", "0" * 4095 + "5" + "junk")
    assert exc.value.errno == errno.EINVAL
    assert kernel.read_attr("sleep_millisecs") == "5\n"  # the first page was applied
    kernel.write_all("run", "1\n")
    assert kernel.run == 1


def test_every_tunable_is_a_plain_attribute():
    kernel = Kernel()
    for name in TUNABLES:
        if name != "advisor_mode":
            assert kernel.read_attr(name) == f"{getattr(kernel, name)}\n"
    assert kernel.advisor_mode == "none"


# ---- the parsers -------------------------------------------------------------------

digits = st.integers(min_value=0, max_value=2**70)


@given(digits, st.sampled_from(["", "+"]), st.sampled_from(["", "\n"]), st.integers(0, 3))
def test_kstrtoull_accepts_decimal_with_sign_newline_and_zeros(n, sign, end, zeros):
    text = (sign + "0" * zeros + str(n) + end).encode()
    if n >= 2**64:
        with pytest.raises(OSError) as exc:
            kstrto.kstrtoull(text)
        assert exc.value.errno == errno.ERANGE
    else:
        assert kstrto.kstrtoull(text) == n


@given(st.integers(min_value=-(2**65), max_value=2**65),
       st.text(alphabet=" \tx\n-+.", min_size=1, max_size=3).filter(lambda t: t != "\n"))
def test_kstrtoint_range_and_trailing_garbage(n, tail):
    text = str(n).encode()
    if kstrto.S32_MIN <= n <= kstrto.S32_MAX:
        assert kstrto.kstrtoint(text) == n
        assert kstrto.kstrtoint(text + b"\n") == n
    else:
        with pytest.raises(OSError) as exc:
            kstrto.kstrtoint(text)
        assert exc.value.errno == errno.ERANGE
    with pytest.raises(OSError) as exc:
        kstrto.kstrtoint(text + tail.encode())
    # a 64-bit overflow is seen while reading the digits, before the garbage
    assert exc.value.errno == (errno.ERANGE if abs(n) >= 2**64 else errno.EINVAL)


def test_kstrtobool_first_character_decides():
    assert kstrto.kstrtobool(b"yes please") is True
    assert kstrto.kstrtobool(b"0x") is False
    assert kstrto.kstrtobool(b"oN") is True
    assert kstrto.kstrtobool(b"ofF") is False
    for bad in (b"o", b"ok", b"", b"2", b" y", b"\0y"):
        with pytest.raises(OSError):
            kstrto.kstrtobool(bad)


def test_sysfs_streq_takes_one_newline_on_either_side():
    assert kstrto.sysfs_streq(b"none", b"none\n")
    assert kstrto.sysfs_streq(b"none", b"none\0junk")
    assert not kstrto.sysfs_streq(b"none", b"none\n\n")
    assert not kstrto.sysfs_streq(b"none", b"none ")
    assert not kstrto.sysfs_streq(b"none", b"non")


def test_table_file_is_valid_json_with_one_row_per_line():
    text = probe.TABLE_PATH.read_text()
    assert json.loads(text) == TABLE
    assert text.count("\n") > len(TABLE["rows"])
