"""The ksmtuned configuration file, parsed as data and never executed.

The reference daemon sources /etc/ksmtuned.conf with bash and then applies
``${KEY:-default}``.  The effective value of a key is therefore: the file's
value when the file sets it (an empty value there means the default), else a
non-empty environment variable, else the default.  PIDFILE is the exception
(``${PIDFILE-default}``): any set value counts, even an empty one.

The accepted syntax (``config_syntax.py``): blank lines, ``# comments``, ``KEY=value``
and ``export KEY=value`` with quotes; anything bash would execute or expand is an
error naming ``file:line``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ksmtuned_py import compat as compatmod
from ksmtuned_py.config_syntax import Assignment, ConfigError, parse_text
from ksmtuned_py.fileio import read_regular

log = logging.getLogger(__name__)

DEFAULT_PATH = "/etc/ksmtuned.conf"
UPSTREAM_PROCESS_REGEX = r"^qemu(-(kvm|system-.+)|:.{1,11})$"
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1



@dataclass(frozen=True)
class Origin:
    """Where an effective value came from."""

    kind: str  # "file", "environment" or "default"
    path: str | None = None
    line: int | None = None
    note: str | None = None  # whose default, or which key it follows (the compatibility mode's)

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.kind == "file" else self.kind
        return f"{where} ({self.note})" if self.note else where


# --- values ------------------------------------------------------------------------

_INT = re.compile(r"[+-]?(0|[1-9][0-9]*)")
_OCTAL_LOOKING = re.compile(r"[+-]?0[0-9]+")
_NUMBER = re.compile(r"\+?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_int(text: str) -> int:
    """An integer as the reference's bash arithmetic reads it (decimal, 64-bit).

    Only the whitespace bash itself drops around an unquoted number (space, tab,
    newline) is allowed: a carriage return or form feed breaks the reference's ``[ -lt ]``.
    """
    t = text.strip(" \t\n")
    if _OCTAL_LOOKING.fullmatch(t):
        raise ValueError("expected an integer without leading zeros (bash reads 0NN as octal)")
    if not _INT.fullmatch(t):
        raise ValueError("expected an integer")
    v = int(t)
    if not INT64_MIN <= v <= INT64_MAX:
        raise ValueError("expected an integer that fits in 64 bits")
    return v


def parse_interval(text: str) -> float:
    """A positive number of seconds, as sleep(1) takes it (suffixes s, m, h, d allowed)."""
    t = text.strip()
    m = _NUMBER.fullmatch(t)
    if not m:
        raise ValueError("expected a positive number of seconds")
    v = float(t[: len(t) - len(m.group(3))]) * _UNIT[m.group(3)]
    if not (v > 0 and math.isfinite(v)):
        raise ValueError("expected a positive number of seconds")
    return v


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        t = text.strip()
        if t not in choices:
            raise ValueError("expected " + " or ".join(choices))
        return t

    return parse


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as e:
        raise ValueError(f"expected a regular expression ({e})") from None
    return text


def _text(text: str) -> str:
    return text


def _optional_int(text: str) -> int | None:
    return parse_int(text) if text.strip() else None


def _policy(text: str) -> str:
    from ksmtuned_py.policies import CONFIGURABLE  # policies import this module

    t = text.strip()
    if t not in CONFIGURABLE:
        raise ValueError("expected " + " or ".join(CONFIGURABLE))
    return t


def _percent(text: str) -> int:
    value = parse_int(text)
    if not 1 <= value <= 100:
        raise ValueError("expected a percentage of one CPU, 1 to 100")
    return value


@dataclass(frozen=True)
class KeySpec:
    name: str
    default: str
    parse: Callable[[str], object]
    empty_means_default: bool = True  # ${KEY:-default}; False for ${KEY-default}


KEYS: dict[str, KeySpec] = {
    spec.name: spec
    for spec in (
        KeySpec("KSM_MONITOR_INTERVAL", "60", parse_interval),
        KeySpec("KSM_SLEEP_MSEC", "10", parse_int),
        KeySpec("KSM_NPAGES_BOOST", "300", parse_int),
        KeySpec("KSM_NPAGES_DECAY", "-50", parse_int),
        KeySpec("KSM_NPAGES_MIN", "64", parse_int),
        KeySpec("KSM_NPAGES_MAX", "1250", parse_int),
        KeySpec("KSM_THRES_COEF", "20", parse_int),
        KeySpec("KSM_THRES_CONST", "2048", parse_int),
        KeySpec("PIDFILE", "/var/run/ksmtune.pid", _text, empty_means_default=False),
        KeySpec("LOGFILE", "", _text),
        KeySpec("DEBUG", "", _text),
        KeySpec("KSM_PROCESS_REGEX", UPSTREAM_PROCESS_REGEX, _regex),
        KeySpec("KSM_MEMORY_METRIC", "rss", _choice("rss", "pss")),
        KeySpec("KSM_FREE_METRIC", "classic", _choice("classic", "available")),
        KeySpec("KSM_MAX_KERNEL_PAGES", "", _optional_int),
        KeySpec("KSM_METRICS_TEXTFILE", "", _text),
        KeySpec("KSM_POLICY", "ksmtuned", _policy),
        KeySpec("KSM_MAX_CPU", "20", _percent),
        KeySpec("KSM_COMPAT", compatmod.AUTO, _choice(compatmod.AUTO, compatmod.UPSTREAM, compatmod.PROXMOX)),
        # Proxmox VE's ksmtuned's own key, checked by apply_compat (it means nothing upstream).
        KeySpec("KSM_PS_METRIC", "", _text),
    )
}


@dataclass(frozen=True)
class Setting:
    """One effective value: the parsed value, its text and where it came from."""

    key: str
    value: object
    text: str
    origin: Origin


@dataclass
class Config:
    """The effective configuration."""

    path: str
    settings: dict[str, Setting]
    file_found: bool = True
    warnings: list[str] = field(default_factory=list)
    compat: compatmod.Compat = compatmod.Compat(compatmod.UPSTREAM, "the default")

    def __getitem__(self, key: str):
        return self.settings[key].value

    @property
    def monitor_interval(self) -> float:
        return self["KSM_MONITOR_INTERVAL"]

    @property
    def pidfile(self) -> str:
        return self["PIDFILE"]

    @property
    def logfile(self) -> str:
        return self["LOGFILE"]

    @property
    def debug(self) -> bool:
        return bool(self["DEBUG"])

    @property
    def process_regex(self) -> str:
        return self["KSM_PROCESS_REGEX"]

    @property
    def memory_metric(self) -> str:
        return self["KSM_MEMORY_METRIC"]

    @property
    def free_metric(self) -> str:
        return self["KSM_FREE_METRIC"]

    @property
    def metrics_textfile(self) -> str:
        return self["KSM_METRICS_TEXTFILE"]

    @property
    def max_kernel_pages(self) -> int | None:
        return self["KSM_MAX_KERNEL_PAGES"]


def nearest_key(name: str, keys=KEYS) -> str | None:
    """The known key an unknown name was probably meant to be."""
    import difflib  # only needed for a typo: keep the daemon's start-up light
    matches = difflib.get_close_matches(name.upper(), list(keys), n=1, cutoff=0.6)
    return matches[0] if matches else None


def resolve(
    assignments: list[Assignment],
    path: str,
    environ: Mapping[str, str],
    keys: Mapping[str, KeySpec] = KEYS,
) -> tuple[dict[str, Setting], list[str]]:
    """Effective settings from parsed assignments, the environment and defaults."""
    warnings: list[str] = []
    in_file: dict[str, Assignment] = {}
    for a in assignments:
        if a.key in keys:
            in_file[a.key] = a
        else:
            hint = nearest_key(a.key, keys)
            msg = f"{path}:{a.line}: unknown key {a.key}, ignored"
            if hint:
                msg += f" (did you mean {hint}?)"
            warnings.append(msg)
    settings: dict[str, Setting] = {}
    for name, spec in keys.items():
        a = in_file.get(name)
        env = environ.get(name)
        if a is not None and (a.value or not spec.empty_means_default):
            text, origin = a.value, Origin("file", path, a.line)
        elif a is None and env is not None and (env or not spec.empty_means_default):
            text, origin = env, Origin("environment")
        else:
            text, origin = spec.default, Origin("default")
        try:
            value = spec.parse(text)
        except ValueError as e:
            where = (path, origin.line) if origin.kind == "file" else (None, None)
            prefix = "" if origin.kind == "file" else f"{origin.kind}: "
            raise ConfigError(f"{prefix}{name}: invalid value {shown(text)}; {e}", *where) from None
        if name == "PIDFILE" and not text:
            where = (path, origin.line) if origin.kind == "file" else (None, None)
            prefix = "" if origin.kind == "file" else f"{origin.kind}: "
            raise ConfigError(
                f"{prefix}PIDFILE: invalid value ''; expected a path (remove the line for the default)",
                *where,
            )
        settings[name] = Setting(name, value, text, origin)
    return settings, warnings


MAX_CONFIG_BYTES = 1 << 20  # far above any real ksmtuned.conf; /dev/zero as a config ends here


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist (the reference then uses defaults).

    A symbolic link is followed (configuration management links /etc files); a
    FIFO, socket or directory is refused instead of read (a FIFO would block),
    and /dev/null reads as an empty file.  Bytes that are not UTF-8 are kept as
    they are (surrogate escapes), so a path in a value reaches the file system intact.
    """
    try:
        data = read_regular(path, MAX_CONFIG_BYTES + 1, follow=True, devices=True)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(f"cannot read {path}: is a directory") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"cannot read {path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, not a ksmtuned.conf")
    return data.decode("utf-8", errors="surrogateescape")


def shown(text: str) -> str:
    """A value for a message: its repr, with bytes that are not UTF-8 as ``\\xff`` (not ``\\udcff``)."""
    return _SURROGATE.sub(r"\1\\x\2", repr(text))


# in a repr: an escaped lone surrogate (surrogateescape's U+DC80..U+DCFF, one per byte), not an escaped backslash
_SURROGATE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def load(
    path: str = DEFAULT_PATH,
    environ: Mapping[str, str] | None = None,
    keys: Mapping[str, KeySpec] = KEYS,
    root: str | os.PathLike | None = None,
) -> Config:
    """Read, parse and validate a configuration file (a missing file means defaults).

    ``root`` is the host KSM_COMPAT=auto looks at (None: no host, e.g. a simulation: upstream).
    """
    if environ is None:
        environ = os.environ
    text = read_text(path)
    assignments = parse_text(text, path) if text is not None else []
    settings, warnings = resolve(assignments, path, environ, keys)
    if text is None:
        warnings.insert(0, f"{path} does not exist; using the environment and the defaults "
                           "(as ksmtuned does)")
    cfg = Config(path=path, settings=settings, file_found=text is not None, warnings=warnings)
    if "KSM_COMPAT" in settings:
        mode = settings["KSM_COMPAT"]
        cfg.compat = compatmod.resolve(mode.value, str(mode.origin), root)
        warnings += apply_compat(settings, cfg.compat)
    warnings += npages_warnings(settings)
    return cfg


def _where(origin: Origin) -> tuple[str, str | None, int | None]:
    """(message prefix, path, line) for a problem with a value from ``origin``."""
    if origin.kind == "file":
        return f"{origin.path}:{origin.line}: ", origin.path, origin.line
    return ("" if origin.kind == "default" else f"{origin.kind}: "), None, None


def _compat_default(key: str, text: str, note: str) -> Setting:
    return Setting(key, KEYS[key].parse(text), text, Origin("default", note=note))


def apply_compat(settings: dict[str, Setting], compat: compatmod.Compat) -> list[str]:
    """Settings as the mode reads them (Proxmox VE's defaults, KSM_PS_METRIC); the warnings."""
    ps = settings["KSM_PS_METRIC"]
    if not compat.proxmox:
        if ps.origin.kind == "default":
            return []
        return [f"{_where(ps.origin)[0]}KSM_PS_METRIC is Proxmox VE's setting and has no effect in "
                f"upstream mode ({compat.why}); count guests by PSS with KSM_MEMORY_METRIC=pss, "
                "or set KSM_COMPAT=proxmox"]
    for key, text in (("KSM_SLEEP_MSEC", compatmod.PROXMOX_SLEEP_MSEC),
                      ("KSM_PROCESS_REGEX", compatmod.PROXMOX_PROCESS_REGEX),
                      ("KSM_PS_METRIC", compatmod.PROXMOX_PS_METRIC)):
        if settings[key].origin.kind == "default":
            settings[key] = _compat_default(key, text, compatmod.PROXMOX_NOTE)
    ps = settings["KSM_PS_METRIC"]
    metric = compatmod.PS_METRICS.get(ps.text.strip())
    if metric is None:
        prefix, path, line = _where(ps.origin)
        raise ConfigError(f"{'' if path else prefix}KSM_PS_METRIC: invalid value {ps.text!r}; "
                          "expected pss, rsz or rss (the ps column Proxmox VE's ksmtuned sums)", path, line)
    settings["KSM_PS_METRIC"] = Setting(ps.key, ps.text.strip(), ps.text.strip(), ps.origin)
    mem = settings["KSM_MEMORY_METRIC"]
    if mem.origin.kind != "default" and mem.value == metric:
        return []
    settings["KSM_MEMORY_METRIC"] = _compat_default("KSM_MEMORY_METRIC", metric,
                                                    f"KSM_PS_METRIC={ps.text.strip()}, {compatmod.PROXMOX_NOTE}")
    if mem.origin.kind == "default":
        return []
    return [f"{_where(mem.origin)[0]}KSM_MEMORY_METRIC={mem.text} has no effect in proxmox mode: "
            f"KSM_PS_METRIC={ps.text.strip()} decides how guests are counted"]


def npages_warnings(settings: dict[str, Setting]) -> list[str]:
    """KSM_NPAGES_MIN above KSM_NPAGES_MAX: legal, and what the reference then does."""
    low, high = settings.get("KSM_NPAGES_MIN"), settings.get("KSM_NPAGES_MAX")
    if low is None or high is None or low.value <= high.value:
        return []
    return [f"{_where(low.origin)[0]}KSM_NPAGES_MIN={low.value} is above KSM_NPAGES_MAX={high.value}, "
            f"so pages_to_scan is never between them: as ksmtuned does, a cycle that starts KSM writes "
            f"{low.value} when npages plus the step (KSM_NPAGES_BOOST or KSM_NPAGES_DECAY) is below "
            f"{low.value}, else {high.value}"]


def log_warnings(config: Config) -> None:
    for w in config.warnings:
        log.warning("%s", w)
