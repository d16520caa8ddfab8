"""The tuning policies, behind ``cycle.Policy``; ksmtuned's rule is the default.

A new policy is a class with the members of :class:`ksmtuned_py.cycle.Policy` and the two
constructors ``from_config(config, **params)`` and ``from_state(state)``, the names of the
parameters it takes (``params``), and one entry in :data:`POLICIES`; the cycle, the hosts and
the commands stay as they are.  A policy is named by a spec, its name and optionally its
parameters: ``ksmtuned``, ``always``, ``always:pages_to_scan=1000,sleep_millisecs=20``
(:func:`from_spec`), the same text wherever one is chosen.
"""

from __future__ import annotations


from ksmtuned_py import config as configmod
from ksmtuned_py.adaptive import AdaptivePolicy
from ksmtuned_py.cycle import Decision
from ksmtuned_py.decision import START, STOP, Params, Tuner, Tuning
from ksmtuned_py.readings import MemInfo, Readings

DEFAULT = "ksmtuned"


def ksmtuned_params(config: configmod.Config) -> Params:
    """The configuration's KSM_* values (with the text of those the reference copies verbatim)."""
    texts = config.settings
    return Params(
        sleep_msec=config["KSM_SLEEP_MSEC"],
        npages_boost=config["KSM_NPAGES_BOOST"],
        npages_decay=config["KSM_NPAGES_DECAY"],
        npages_min=config["KSM_NPAGES_MIN"],
        npages_max=config["KSM_NPAGES_MAX"],
        thres_coef=config["KSM_THRES_COEF"],
        thres_const=config["KSM_THRES_CONST"],
        npages_min_text=texts["KSM_NPAGES_MIN"].text,
        npages_max_text=texts["KSM_NPAGES_MAX"].text,
        thres_const_text=texts["KSM_THRES_CONST"].text,
    )


def start_preamble(config: configmod.Config) -> tuple[str, ...]:
    """Proxmox VE's ksmtuned names its memory metric first (``using pss metric``); upstream's nothing."""
    if config.compat.proxmox:
        return (f"using {config['KSM_PS_METRIC']} metric",)
    return ()


class KsmtunedPolicy:
    """ksmtuned's rule (``decision.py``, bit-exact with the reference): the tuning of the start, then npages."""

    name = "ksmtuned"
    params: tuple[str, ...] = ()
    uses_config = True  # its decisions follow the configuration's KSM_* values

    def __init__(self, params: Params, tuning: Tuning | None = None, npages: int = 0,
                 preamble: tuple[str, ...] = ()):
        self.params = params
        self.tuner: Tuner | None = None if tuning is None else Tuner(params, tuning.total, npages, tuning)
        # DEBUG lines the reference prints before total/sleep/thres (Proxmox VE's "using pss metric").
        self.preamble = tuple(preamble)

    @classmethod
    def from_config(cls, config: configmod.Config) -> "KsmtunedPolicy":
        return cls(ksmtuned_params(config), preamble=start_preamble(config))

    @property
    def spec(self) -> str:
        return self.name

    def describe(self) -> str:
        """What the policy does, in words (simulate's plan)."""
        return "ksmtuned's rule"

    @classmethod
    def from_state(cls, state: dict) -> "KsmtunedPolicy":
        """The policy a daemon published; KeyError, TypeError or ValueError when the state is not one."""
        return cls(Params(**state["params"]), Tuning(**state["tuning"]), int(state["npages"]),
                   tuple(str(line) for line in state.get("preamble", ())))

    @property
    def npages(self) -> int:
        """pages_to_scan as the rule holds it (0 at the start)."""
        return self.tuner.npages if self.tuner is not None else 0

    def start(self, meminfo: MemInfo) -> None:
        """total, sleep and thres from MemTotal; npages starts at 0."""
        self.tuner = Tuner(self.params, meminfo.total)

    def start_lines(self) -> list[str]:
        return [*self.preamble, *self.tuner.tuning.debug_lines()] if self.tuner is not None else []

    def summary(self) -> str:
        t = self.tuner.tuning
        return f"total {t.total} kB, thres {t.thres} kB, sleep {t.sleep}ms"

    def decide(self, readings: Readings) -> Decision:
        if self.tuner is None:
            self.start(readings.meminfo)
        a = self.tuner.decide(readings.free_kb, readings.committed_kb)
        return Decision(
            action=a.action,
            reason=a.reason(),
            npages=a.npages,
            sleep_ms=a.sleep_ms,
            level=a.level,
            npages_text=a.npages_text,
            thres_kb=a.thres_kb,
            total_kb=a.total_kb,
            debug_before=tuple(a.debug_lines_before_write()),
            debug_after=tuple(a.debug_lines_after_write()),
        )

    def state(self) -> dict:
        t = self.tuner.tuning
        # (vars, not asdict: plain numbers and strings, and asdict's deep copy is a tenth of a cycle)
        return {"policy": self.name, "npages": self.npages, "tuning": dict(vars(t)),
                "params": dict(vars(self.params)), "preamble": list(self.preamble)}


class FixedPolicy:
    """A rule that decides the same every cycle, whatever the readings (the base of always, off, advisor)."""

    name = ""
    action = START
    params: tuple[str, ...] = ()
    uses_config = False  # the configuration's KSM_* values play no part
    advisor_mode: str | None = None

    def __init__(self, **knobs: int) -> None:
        self.knobs = {k: int(v) for k, v in knobs.items()}
        self.total_kb = 0

    @classmethod
    def from_config(cls, config: configmod.Config, **knobs: int) -> "FixedPolicy":
        return cls(**knobs)

    @classmethod
    def from_state(cls, state: dict) -> "FixedPolicy":
        """The policy a daemon published; KeyError, TypeError or ValueError when the state is not one."""
        policy = cls(**{k: int(v) for k, v in state["knobs"].items() if k in cls.params})
        policy.total_kb = int(state["total_kb"])
        return policy

    @property
    def spec(self) -> str:
        """The policy's spec: its name and the parameters given (``always:pages_to_scan=1000``)."""
        given = ",".join(f"{k}={v}" for k, v in self.knobs.items())
        return f"{self.name}:{given}" if given else self.name

    @property
    def npages(self) -> int | None:
        return self.knobs.get("pages_to_scan")

    def start(self, meminfo: MemInfo) -> None:
        self.total_kb = meminfo.total

    def start_lines(self) -> list[str]:
        return []

    def summary(self) -> str:
        return f"total {self.total_kb} kB, {self.describe()}"

    def describe(self) -> str:
        """What the policy does, in words."""
        raise NotImplementedError

    def decide(self, readings: Readings) -> Decision:
        if not self.total_kb:
            self.start(readings.meminfo)
        if self.action == STOP:
            return Decision(action=STOP, reason=self.describe(), total_kb=self.total_kb)
        return Decision(action=START, reason=self.describe(), total_kb=self.total_kb,
                        npages=self.knobs.get("pages_to_scan"), sleep_ms=self.knobs.get("sleep_millisecs"),
                        advisor_mode=self.advisor_mode)

    def state(self) -> dict:
        return {"policy": self.name, "knobs": dict(self.knobs), "total_kb": self.total_kb}

    def _settings(self) -> str:
        """The knobs it writes, or that it leaves them as they are."""
        if not self.knobs:
            return "the settings as they are"
        return ", ".join(f"{k} {v}" for k, v in self.knobs.items())


class AlwaysPolicy(FixedPolicy):
    """KSM always on: the baseline of what KSM can do, at the host's settings or the ones given."""

    name = "always"
    params = ("pages_to_scan", "sleep_millisecs")

    def describe(self) -> str:
        return f"KSM always on, at {self._settings()}"


class OffPolicy(FixedPolicy):
    """KSM always off: what the host is without it."""

    name = "off"
    action = STOP

    def describe(self) -> str:
        return "KSM always off"


class AdvisorPolicy(FixedPolicy):
    """KSM always on with the kernel's scan-time advisor choosing pages_to_scan (Linux >= 6.7)."""

    name = "advisor"
    params = ("sleep_millisecs",)
    advisor_mode = "scan-time"

    def describe(self) -> str:
        at = "" if not self.knobs else f", at {self._settings()}"
        return f"KSM always on, pages_to_scan chosen by the kernel's scan-time advisor{at}"


#: Policy name -> class: every policy a spec (``simulate --policy``) can name.
POLICIES = {cls.name: cls for cls in (KsmtunedPolicy, AdaptivePolicy, AlwaysPolicy, OffPolicy, AdvisorPolicy)}
#: The ones the daemon's configuration chooses from (KSM_POLICY): the others are what-if baselines.
CONFIGURABLE = (KsmtunedPolicy.name, AdaptivePolicy.name)


class PolicySpecError(ValueError):
    """A policy spec that names no policy, or parameters it does not take; the message says which."""


def parse_spec(spec: str) -> tuple[str, dict[str, int]]:
    """``always:pages_to_scan=1000,sleep_millisecs=20`` -> ("always", {...}); PolicySpecError when wrong."""
    name, colon, rest = spec.strip().partition(":")
    cls = POLICIES.get(name)
    if cls is None:
        raise PolicySpecError(f"no policy {name!r} (one of: {', '.join(POLICIES)})")
    params: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in cls.params:
            takes = f"takes {', '.join(cls.params)}" if cls.params else "takes no parameters"
            raise PolicySpecError(f"policy {name} {takes}, not {key!r}")
        if not eq or not value.strip().isdigit():
            raise PolicySpecError(f"policy {name}: {key} needs a whole number >= 0, as {key}=100")
        params[key] = int(value)
    if colon and not params:
        raise PolicySpecError(f"policy {name}: nothing after ':' (write e.g. {name}:{(cls.params or ('x',))[0]}=100)")
    return name, params


def from_spec(spec: str, config: configmod.Config):
    """The policy a spec names, not started yet; PolicySpecError when the spec is wrong."""
    name, params = parse_spec(spec)
    return POLICIES[name].from_config(config, **params)


def from_config(config: configmod.Config):
    """The configured policy (KSM_POLICY), not started yet (``start`` it, or let its first decision start it)."""
    return POLICIES[config.settings["KSM_POLICY"].value if "KSM_POLICY" in config.settings else DEFAULT] \
        .from_config(config)


def from_state(state: dict):
    """The policy a running daemon published; KeyError, TypeError or ValueError when it is not understood."""
    return POLICIES[state.get("policy", DEFAULT)].from_state(state)
