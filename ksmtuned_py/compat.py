"""Which ksmtuned to reproduce: upstream's (Fedora/RHEL, Debian) or Proxmox VE's.

Proxmox VE ships its own ksmtuned (package ksm-control-daemon: the 2011 scripts plus
Debian patches).  It applies the same rule to its readings, but reads them otherwise:

- guests are the processes whose name (comm) is exactly ``kvm`` (``ps -C kvm``);
- a guest's memory is ``KSM_PS_METRIC`` (``pss`` by default, or ``rsz``), summed by awk
  in double precision and printed with ``printf "%.0f"`` (:func:`readings.awk_sum_kb`);
- ``KSM_SLEEP_MSEC`` defaults to 100 instead of 10;
- its first debug line names the metric: ``using pss metric``;
- SIGUSR1 takes effect only when the current sleep ends (ksmtuned-py retunes at once:
  sooner, and the same decision on the same readings).

``KSM_COMPAT`` chooses: ``upstream``, ``proxmox``, or ``auto`` (the default): ``proxmox``
on a Proxmox VE host, detected from the files under the root (Proxmox's own packages in
the dpkg status, or ``/etc/pve``), else ``upstream``.  This module resolves the mode and
turns it into the settings the rest of ksmtuned-py already understands (the guest
regex, the memory metric, the sleep default); nothing else needs to know about it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

AUTO, UPSTREAM, PROXMOX = "auto", "upstream", "proxmox"
#: Packages only a Proxmox VE host has (ksm-control-daemon is Proxmox's ksmtuned).
PROXMOX_PACKAGES = ("pve-manager", "proxmox-ve", "ksm-control-daemon")
DPKG_STATUS = "var/lib/dpkg/status"
PVE_DIR = "etc/pve"

PROXMOX_PROCESS_REGEX = "^kvm$"
PROXMOX_SLEEP_MSEC = "100"
PROXMOX_PS_METRIC = "pss"
#: KSM_PS_METRIC (a ps column) -> the KSM_MEMORY_METRIC that reads the same number.
#: ps's rsz and rss are both VmRSS; pss is smaps_rollup's Pss.
PS_METRICS = {"pss": "pss", "rsz": "rss", "rss": "rss"}
PROXMOX_NOTE = "Proxmox VE"


@dataclass(frozen=True)
class Compat:
    """The mode in effect and why, in words (``status`` and ``check-config`` print both)."""

    mode: str  # UPSTREAM or PROXMOX
    why: str

    @property
    def proxmox(self) -> bool:
        return self.mode == PROXMOX


def installed_package(status_path: str | os.PathLike, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` the dpkg status file lists as installed, None when none is (or no file)."""
    try:
        with open(status_path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    for name in names:
        if _installed(data, name.encode()):
            return name
    return None


def _installed(data: bytes, name: bytes) -> bool:
    """Whether the stanza ``Package: name`` has a Status whose last word is ``installed``."""
    start = 0
    needle = b"Package: " + name + b"\n"
    while (at := data.find(needle, start)) >= 0:
        start = at + len(needle)
        if at and data[at - 1:at] != b"\n":
            continue  # a field continuation or another field's value, not a stanza's first line
        end = data.find(b"\n\n", at)
        stanza = data[at:end if end >= 0 else len(data)]
        for line in stanza.split(b"\n"):
            if line.startswith(b"Status:"):
                words = line.split()
                if words[-1:] == [b"installed"]:
                    return True
    return False


def detect(root: str | os.PathLike) -> Compat:
    """``proxmox`` on a Proxmox VE host under ``root``, else ``upstream``; the reason names the evidence."""
    pve = os.path.join(root, PVE_DIR)
    if os.path.isdir(pve):  # first: a stat, where the dpkg status is megabytes to read
        return Compat(PROXMOX, f"KSM_COMPAT=auto, and this is a Proxmox VE host: {pve} exists")
    status = os.path.join(root, DPKG_STATUS)
    package = installed_package(status, PROXMOX_PACKAGES)
    if package:
        return Compat(PROXMOX, f"KSM_COMPAT=auto, and this is a Proxmox VE host: package {package} "
                               f"is installed ({status})")
    return Compat(UPSTREAM, f"KSM_COMPAT=auto, and this is not a Proxmox VE host (no Proxmox VE "
                            f"package in {status}, no {pve})")


def resolve(setting_text: str, where: str, root: str | os.PathLike | None) -> Compat:
    """The mode for KSM_COMPAT's value (already checked) set at ``where``; ``root`` None: nothing to detect."""
    if setting_text != AUTO:
        return Compat(setting_text, f"KSM_COMPAT={setting_text} ({where})")
    if root is None:
        return Compat(UPSTREAM, "KSM_COMPAT=auto, and there is no host to detect Proxmox VE on")
    return detect(root)
