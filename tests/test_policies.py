"""The policies behind cycle.Policy besides ksmtuned's rule: always, off, advisor; specs and the registry."""

from __future__ import annotations

import os

import pytest

from ksmtuned_py import config as configmod
from ksmtuned_py import policies
from ksmtuned_py.cycle import Cycle
from ksmtuned_py.simhost import SimulationHost
from sysfs_emu import Simulation
from tests.emutree import small_scenario

DEFAULTS = configmod.load(os.devnull, environ={})


def _recorded_cycles(policy_spec: str, cycles: int, ksm: dict | None = None):
    """(reports, writes) of ``cycles`` cycles of the policy on a small simulated host."""
    scenario = small_scenario(run=0)
    if ksm is not None:
        scenario["ksm"] = ksm
    sim = Simulation(scenario)
    written = []
    write_attr = sim.kernel.write_attr

    def recording(name, data):
        written.append((name, data))
        return write_attr(name, data)

    sim.kernel.write_attr = recording
    cycle = Cycle(SimulationHost(sim), policies.from_spec(policy_spec, DEFAULTS))
    reports = []
    for _ in range(cycles):
        sim.advance(60)
        reports.append(cycle.run())
    return sim, reports, written


def test_the_registry_holds_every_policy_under_its_name():
    assert list(policies.POLICIES) == ["ksmtuned", "adaptive", "always", "off", "advisor"]
    for name, cls in policies.POLICIES.items():
        assert cls.name == name
        policy = policies.from_spec(name, DEFAULTS)
        assert policy.spec == name
    assert policies.from_config(DEFAULTS).name == "ksmtuned"  # the default, until KSM_POLICY chooses


def test_always_turns_ksm_on_at_the_settings_as_they_are():
    sim, reports, written = _recorded_cycles("always", 3)
    assert written == [("run", "1\n")] * 3
    assert [r.action for r in reports] == ["start"] * 3
    assert (reports[0].pages_to_scan, reports[0].sleep_millisecs) == (1000, 10)  # the scenario's
    assert reports[0].reason == "KSM always on, at the settings as they are"
    assert reports[-1].pages_sharing > 0


def test_always_with_settings_writes_them_in_the_daemons_order():
    sim, reports, written = _recorded_cycles("always:pages_to_scan=200,sleep_millisecs=50", 2)
    assert written == [("pages_to_scan", "200\n"), ("sleep_millisecs", "50\n"), ("run", "1\n")] * 2
    assert (reports[1].pages_to_scan, reports[1].sleep_millisecs, reports[1].npages) == (200, 50, 200)
    assert reports[1].reason == "KSM always on, at pages_to_scan 200, sleep_millisecs 50"


def test_off_keeps_ksm_off():
    sim, reports, written = _recorded_cycles("off", 2, ksm={"run": 1})
    assert written == [("run", "0\n")] * 2
    assert [(r.action, r.run) for r in reports] == [("stop", 0)] * 2
    # ksmd ran for the minute before the first cycle; stopped, it merges no more (and unmerges nothing)
    assert reports[0].status == "stopped: KSM always off; saved 13.7 MiB"
    assert reports[1].pages_sharing == reports[0].pages_sharing > 0


def test_advisor_switches_the_kernels_advisor_on_once_and_leaves_pages_to_scan_to_it():
    sim, reports, written = _recorded_cycles("advisor", 3)
    # advisor_mode only while it differs; pages_to_scan never (the kernel refuses it in scan-time)
    assert written == [("advisor_mode", "scan-time\n"), ("run", "1\n"), ("run", "1\n"), ("run", "1\n")]
    assert reports[0].writes == ("advisor_mode=scan-time", "run=1")
    assert all(r.advisor_active for r in reports)
    assert sim.kernel.advisor_mode == "scan-time"
    assert reports[0].status.startswith("running: pages_to_scan by the kernel advisor")
    _, _, written = _recorded_cycles("advisor:sleep_millisecs=40", 1)
    assert written == [("advisor_mode", "scan-time\n"), ("sleep_millisecs", "40\n"), ("run", "1\n")]


def test_a_fixed_policy_comes_back_from_its_published_state():
    policy = policies.from_spec("always:pages_to_scan=300", DEFAULTS)
    sim = Simulation(small_scenario())
    policy.start(SimulationHost(sim).read_meminfo())
    again = policies.from_state(policy.state())
    assert (type(again), again.knobs, again.total_kb, again.spec) == (
        policies.AlwaysPolicy, {"pages_to_scan": 300}, policy.total_kb, "always:pages_to_scan=300")
    assert again.summary() == f"total {policy.total_kb} kB, KSM always on, at pages_to_scan 300"


@pytest.mark.parametrize("spec, message", [
    ("sometimes", "no policy 'sometimes' (one of: ksmtuned, adaptive, always, off, advisor)"),
    ("always:pages=5", "policy always takes pages_to_scan, sleep_millisecs, not 'pages'"),
    ("off:sleep_millisecs=5", "policy off takes no parameters, not 'sleep_millisecs'"),
    ("ksmtuned:pages_to_scan=5", "policy ksmtuned takes no parameters, not 'pages_to_scan'"),
    ("always:pages_to_scan=-1", "policy always: pages_to_scan needs a whole number >= 0, as pages_to_scan=100"),
    ("always:pages_to_scan", "policy always: pages_to_scan needs a whole number >= 0, as pages_to_scan=100"),
    ("always:", "policy always: nothing after ':' (write e.g. always:pages_to_scan=100)"),
])
def test_a_wrong_spec_says_what_is_wrong(spec, message):
    with pytest.raises(policies.PolicySpecError) as exc:
        policies.from_spec(spec, DEFAULTS)
    assert str(exc.value) == message
