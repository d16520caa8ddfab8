"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import realksm

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
