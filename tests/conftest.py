"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests import realksm

# Property tests must pass on any machine, every time: the same examples on every run
# (derandomized, no example database carried between runs), and nothing timed (no
# deadline, no health check that measures how long generating examples takes).
settings.register_profile(
    "suite", derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("suite")

# Expensive set-ups (downloaded Debian packages, a debootstrapped root file
# system) are cached here, outside the checkout, and reused between runs.
CACHE_DIR = Path(os.environ.get("KSMTUNED_PY_CACHE", "/var/cache/ksmtuned-py-test"))


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return CACHE_DIR


@pytest.fixture
def real_ksm():
    """The real /sys/kernel/mm/ksm, locked and restored afterwards (run left at 0)."""
    reason = realksm.skip_reason()
    if reason:
        pytest.skip(reason)
    with realksm.real_ksm() as path:
        yield path
