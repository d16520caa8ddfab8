"""sysfs-emu simulate for decisions: runs under policies, the cycles, the summary, the files and the table."""

from __future__ import annotations

import os

import pytest

from ksmtuned_py import config as configmod
from ksmtuned_py.simhost import SimulationHost
from sysfs_emu import Simulation

DEFAULTS = configmod.load(os.devnull, environ={})


def _churning_scenario() -> dict:
    """Guests that start, exit, rewrite and touch memory while ksmd maps empty pages to the zero page."""
    guest = "qemu-system-x86"
    return {
        "host": {"memory": "1GiB"},
        "ksm": {"pages_to_scan": 500, "sleep_millisecs": 10, "use_zero_pages": 1, "run": 1},
        "processes": [
            {"name": guest, "regions": [{"pages": 2000, "fill": "pool", "pool": "os"},
                                        {"pages": 1500, "fill": "zero"}]},
            {"name": guest, "start": "90s", "exit": "400s", "regions": [
                {"pages": 2000, "fill": "pool", "pool": "os"}, {"pages": 800, "fill": "zero", "lazy": True}]},
            {"name": "other", "regions": [{"pages": 300, "fill": "zero"}]},
        ],
        "events": [
            {"at": "150s", "touch": {"process": 1, "region": 1, "pages": 500}},
            {"at": "200s", "rewrite": {"process": 0, "region": 1, "first": 0, "pages": 700, "fill": "unique"}},
            {"at": "260s", "rewrite": {"process": 0, "region": 1, "first": 0, "pages": 300, "fill": "zero"}},
        ],
    }


@pytest.mark.parametrize("metric", ["rss", "pss"])
def test_the_simulation_host_counts_guests_again_exactly_when_their_size_can_change(metric):
    sim = Simulation(_churning_scenario())
    cached = SimulationHost(sim, memory_metric=metric)
    seen = set()
    for _ in range(60):
        sim.advance(10)
        fresh = SimulationHost(sim, memory_metric=metric).read()
        got = cached.read()
        assert [(g.pid, g.kb) for g in got.guests] == [(g.pid, g.kb) for g in fresh.guests], sim.now
        seen.add(got.committed_kb)
    assert len(seen) > 5  # sizes did move: zero pages mapped, guests started, touched, rewrote, exited
