"""``ksmtuned-py ksm start|stop``: the reference's ksmctl helper of ksm.service."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from ksmtuned_py import config as configmod
from ksmtuned_py.errors import UserError
from ksmtuned_py.knobs import describe_error, require_ksm, write_knob
from ksmtuned_py.readings import PAGE_SIZE, read_meminfo

DEFAULTS_FILES = ("/etc/default/ksm", "/etc/sysconfig/ksm")
_KEYS = {"KSM_MAX_KERNEL_PAGES": configmod.KEYS["KSM_MAX_KERNEL_PAGES"]}


def load_defaults(
    paths: Sequence[str] = DEFAULTS_FILES, environ: Mapping[str, str] | None = None
) -> configmod.Config:
    """KSM_MAX_KERNEL_PAGES from the first of /etc/default/ksm, /etc/sysconfig/ksm that exists."""
    for path in paths:
        if os.path.exists(path):
            cfg = configmod.load(path, environ, keys=_KEYS)
            configmod.log_warnings(cfg)
            return cfg
    return configmod.load(os.devnull, environ, keys=_KEYS)


def _write(directory, name: str, value: int) -> None:
    try:
        write_knob(directory, name, value)
    except OSError as e:
        raise UserError(f"cannot write {value} to {os.path.join(directory, name)}: {describe_error(e)}") from None


def start(
    root: str = "/",
    paths: Sequence[str] = DEFAULTS_FILES,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Start KSM; on kernels with max_kernel_pages, set it first. Returns what was written."""
    d = require_ksm(root)
    done = []
    if os.path.exists(os.path.join(d, "max_kernel_pages")):
        cfg = load_defaults(paths, environ)
        limit = cfg.max_kernel_pages
        if limit is None:
            limit = read_meminfo(root).total * 1024 // PAGE_SIZE // 2
        _write(d, "max_kernel_pages", limit)
        done.append(f"max_kernel_pages={limit}")
    _write(d, "run", 1)
    done.append("run=1")
    return ["wrote " + ", ".join(done)]


def stop(root: str = "/") -> list[str]:
    """Stop KSM (pages already merged stay merged)."""
    d = require_ksm(root)
    _write(d, "run", 0)
    return ["wrote run=0"]
