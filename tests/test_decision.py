"""The decision table: every branch and boundary of the reference's arithmetic."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ksmtuned_py.decision import BOOST, DECAY, START, STOP, Params, Tuner, Tuning, div, wrap

I64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
GIB_KB = 1024 * 1024


def tuner(total=16 * GIB_KB, npages=0, **params) -> Tuner:
    return Tuner(Params(**params), total, npages=npages)


# --- start-up values: total, sleep, thres ------------------------------------------


def test_default_tuning_on_16_gib():
    t = Tuning.compute(Params(), 16 * GIB_KB)
    assert (t.total, t.sleep, t.thres) == (16777216, 10, 3355443)
    assert t.debug_lines() == ["total 16777216", "sleep 10", "thres 3355443"]


def test_small_host_sleeps_longer():
    t = Tuning.compute(Params(), 2 * GIB_KB)
    assert t.sleep == 80  # 10 * 16 GiB / 2 GiB
    assert t.thres == 419430  # 2097152 * 20 / 100, truncated


def test_sleep_clamped_to_10_at_and_below_10():
    # 167772160 / 15252014 = 11.0000...: just above the clamp stays
    assert Tuning.compute(Params(), 15252014).sleep == 11
    assert Tuning.compute(Params(), 15252015).sleep == 10  # exactly 10 -> 10
    assert Tuning.compute(Params(), 64 * GIB_KB).sleep == 10  # 2.5 -> 2 -> 10
    assert Tuning.compute(Params(sleep_msec=-5), GIB_KB).sleep == 10  # negative -> 10
    assert Tuning.compute(Params(sleep_msec=0), GIB_KB).sleep == 10


def test_thres_const_wins_only_when_greater():
    # 10000 kB * 20% = 2000 < 2048: the constant wins
    assert Tuning.compute(Params(), 10000).thres == 2048
    # 10240 * 20 / 100 = 2048 == const: "-gt" is false, the computed value stays (same number)
    assert Tuning.compute(Params(thres_const=2048), 10240).thres == 2048
    assert Tuning.compute(Params(thres_const=2047), 10240).thres == 2048
    assert Tuning.compute(Params(thres_const=2049), 10240).thres == 2049


def test_division_truncates_toward_zero_with_negative_numbers():
    # -1001 / 100 is -10 in bash (Python's // would give -11)
    t = Tuning.compute(Params(thres_coef=-1, thres_const=-100), 1001)
    assert t.thres == -10
    assert div(-7, 2) == -3 and div(7, -2) == -3 and div(-7, -2) == 3 and div(7, 2) == 3


def test_big_numbers_wrap_at_64_bits():
    # (2**40 + 1) * 16 * 1024 * 1024 = 2**64 + 2**24, which wraps to 2**24
    assert Tuning.compute(Params(sleep_msec=(1 << 40) + 1), 1 << 20).sleep == 16
    # 3 * 2**62 wraps to -2**62; / 100 truncates toward zero
    t = Tuning.compute(Params(thres_coef=3, thres_const=-(1 << 63)), 1 << 62)
    assert t.thres == -46116860184273879
    assert wrap(1 << 63) == -(1 << 63) and wrap(-(1 << 63) - 1) == (1 << 63) - 1


def test_total_zero_is_refused():
    with pytest.raises(ValueError):
        Tuning.compute(Params(), 0)


# --- each cycle ------------------------------------------------------------------------
# total 1000000 kB, thres 200000 kB with the defaults.


def test_stop_when_guests_fit_and_free_above_thres():
    tu = tuner(total=1000000, npages=700)
    d = tu.decide(free_kb=200001, committed_kb=799999)  # 799999 + 200000 < 1000000
    assert (d.action, d.npages, d.level) == (STOP, 700, None)
    assert tu.npages == 700
    assert d.debug_lines() == [
        "committed 799999 free 200001",
        "999999 < 1000000 and free > 200000, stop ksm",
    ]


def test_committed_plus_thres_equal_total_starts():
    tu = tuner(total=1000000)
    d = tu.decide(free_kb=900000, committed_kb=800000)  # 800000 + 200000 == total: not "<"
    assert (d.action, d.level, d.npages, d.sleep_ms) == (START, DECAY, 64, 167)
    assert d.debug_lines() == [
        "committed 800000 free 900000",
        "1000000 > 1000000, start ksm",
        "900000 > 200000, decay",
        "KSMCTL start 64 167",
    ]


def test_free_equal_thres_starts_and_decays():
    tu = tuner(total=1000000, npages=500)
    d = tu.decide(free_kb=200000, committed_kb=0)  # free == thres: not "> thres", not "< thres"
    assert (d.action, d.level, d.npages) == (START, DECAY, 450)
    assert d.debug_lines()[1:] == [
        "200000 > 1000000, start ksm",
        "200000 > 200000, decay",
        "KSMCTL start 450 167",
    ]


def test_free_one_above_thres_stops():
    assert tuner(total=1000000).decide(free_kb=200001, committed_kb=0).action == STOP


def test_free_below_thres_boosts():
    tu = tuner(total=1000000)
    d = tu.decide(free_kb=199999, committed_kb=0)
    assert (d.action, d.level, d.npages) == (START, BOOST, 300)
    assert d.debug_lines()[2] == "199999 < 200000, boost"
    assert tu.decide(free_kb=199999, committed_kb=0).npages == 600


def test_boost_clamped_to_max():
    tu = tuner(total=1000000, npages=1000)
    assert tu.decide(free_kb=0, committed_kb=0).npages == 1250
    assert tu.decide(free_kb=0, committed_kb=0).npages == 1250


def test_negative_decay_crossing_min_clamps_to_min():
    tu = tuner(total=1000000, npages=100)
    d = tu.decide(free_kb=500000, committed_kb=900000)
    assert (d.level, d.previous_npages, d.npages) == (DECAY, 100, 64)  # 50 < 64
    assert tu.decide(free_kb=500000, committed_kb=900000).npages == 64
    # exactly MIN after decay stays MIN; one above stays
    assert tuner(total=1000000, npages=114).decide(free_kb=500000, committed_kb=900000).npages == 64
    assert tuner(total=1000000, npages=115).decide(free_kb=500000, committed_kb=900000).npages == 65


def test_min_greater_than_max_follows_the_reference_order():
    # MIN is checked first: below MIN gives MIN even though it is above MAX;
    # otherwise above MAX gives MAX even though it is below MIN.
    tu = tuner(total=1000000, npages_min=500, npages_max=100)
    assert tu.decide(free_kb=0, committed_kb=0).npages == 500  # 0 + 300 < 500
    assert tu.decide(free_kb=0, committed_kb=0).npages == 100  # 800 > 100
    assert tu.decide(free_kb=0, committed_kb=0).npages == 500  # 400 < 500


def test_npages_kept_across_stop():
    tu = tuner(total=1000000)
    assert tu.decide(free_kb=0, committed_kb=0).npages == 300
    assert tu.decide(free_kb=0, committed_kb=0).npages == 600
    stop = tu.decide(free_kb=900000, committed_kb=0)
    assert (stop.action, stop.npages) == (STOP, 600)
    assert tu.decide(free_kb=0, committed_kb=0).npages == 900


def test_npages_overflow_wraps_then_clamps():
    top = (1 << 63) - 1
    tu = tuner(total=1000000, npages=top, npages_max=top, npages_boost=1)
    assert tu.decide(free_kb=0, committed_kb=0).npages == 64  # wraps negative -> MIN


def test_committed_plus_thres_wraps_like_bash():
    tu = tuner(total=1000000)
    d = tu.decide(free_kb=900000, committed_kb=(1 << 63) - 1)  # + 200000 wraps negative: "< total"
    assert d.action == STOP
    assert d.debug_lines()[1] == "-9223372036854575809 < 1000000 and free > 200000, stop ksm"


def test_reason_names_the_numbers():
    d = tuner(total=1000000, npages=100).decide(free_kb=100000, committed_kb=0)
    assert d.reason() == (
        "free 100000 kB <= thres 200000 kB; free 100000 kB < thres 200000 kB, "
        "so boost pages_to_scan from 100 to 400"
    )
    d = tuner(total=1000000).decide(free_kb=300000, committed_kb=100000)
    assert d.reason() == (
        "committed + thres = 300000 kB < total 1000000 kB and free 300000 kB > thres 200000 kB"
    )


# --- bash itself as the oracle for the 64-bit arithmetic --------------------------------


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(I64, I64, I64.filter(lambda x: x != 0)), min_size=1, max_size=40))
def test_wrap_and_div_match_bash_arithmetic(triples):
    script = "".join(f"echo $[ ({a}) * ({b}) / ({c}) ] $[ ({a}) + ({b}) ]\n" for a, b, c in triples)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    ours = "".join(f"{div(wrap(a * b), c)} {wrap(a + b)}\n" for a, b, c in triples)
    assert out == ours


# --- the text of values the reference copies verbatim ------------------------------------


def test_clamp_to_min_keeps_the_configured_text():
    # npages=$KSM_NPAGES_MIN copies the text; `echo $npages` writes and prints it as written
    tu = tuner(total=1000000, npages=100, npages_min=64, npages_min_text="+64")
    d = tu.decide(free_kb=500000, committed_kb=900000)  # decay: 50 < 64
    assert (d.npages, d.npages_text) == (64, "+64")
    assert d.debug_lines()[-1] == "KSMCTL start +64 167"
    # the next cycle computes with the number: 64 - 50 = 14 -> MIN again; 64 + 300 is plain
    assert tu.decide(free_kb=0, committed_kb=0).npages_text == "364"


def test_clamp_to_max_keeps_the_configured_text_split_like_an_unquoted_echo():
    tu = tuner(total=1000000, npages=1000, npages_max=1250, npages_max_text=" +1250\t")
    d = tu.decide(free_kb=0, committed_kb=0)
    assert (d.npages, d.npages_text) == (1250, "+1250")
    assert d.debug_lines()[-1] == "KSMCTL start +1250 167"


def test_unclamped_npages_is_plain_decimal():
    d = tuner(total=1000000, npages=100, npages_min_text="+64").decide(free_kb=0, committed_kb=0)
    assert (d.npages, d.npages_text) == (400, "400")


def test_thres_from_const_keeps_its_text_in_every_line():
    p = Params(thres_const=300000, thres_const_text=" +300000")
    t = Tuning.compute(p, 1000000)
    assert (t.thres, t.thres_text) == (300000, " +300000")
    # `debug thres $thres` is unquoted (one space); the cycle lines quote "$thres" (raw)
    assert t.debug_lines()[2] == "thres +300000"
    tu = Tuner(p, 1000000)
    assert tu.decide(free_kb=400000, committed_kb=0).debug_lines()[1:] == [
        "300000 < 1000000 and free >  +300000, stop ksm"]
    assert tu.decide(free_kb=299999, committed_kb=0).debug_lines()[2] == "299999 <  +300000, boost"
    assert tu.decide(free_kb=300000, committed_kb=800000).debug_lines()[2] == "300000 >  +300000, decay"


def test_thres_computed_is_plain_decimal_even_with_a_const_text():
    t = Tuning.compute(Params(thres_const=2048, thres_const_text="+2048"), 1000000)
    assert (t.thres, t.thres_text) == (200000, "200000")


def test_params_from_config_carry_the_text(tmp_path):
    from ksmtuned_py import config as configmod
    from ksmtuned_py.policies import ksmtuned_params

    conf = tmp_path / "ksmtuned.conf"
    conf.write_text("KSM_NPAGES_MIN=+64\nKSM_NPAGES_MAX='+900'\nKSM_THRES_CONST=\"+4096\"\n")
    p = ksmtuned_params(configmod.load(str(conf), environ={}))
    assert (p.npages_min, p.npages_max, p.thres_const) == (64, 900, 4096)
    assert (p.text("npages_min"), p.text("npages_max"), p.text("thres_const")) == ("+64", "+900", "+4096")
    assert ksmtuned_params(configmod.load(str(tmp_path / "none"), environ={})).text("npages_min") == "64"
