"""The tuning policies, behind ``cycle.Policy``; ksmtuned's rule is the default.

A new policy is a class with the members of :class:`ksmtuned_py.cycle.Policy` and the two
constructors ``from_config(config)`` and ``from_state(state)``, and one entry in
:data:`POLICIES`; the cycle, the hosts and the commands stay as they are.
"""

from __future__ import annotations

from dataclasses import asdict

from ksmtuned_py import config as configmod
from ksmtuned_py.cycle import Decision
from ksmtuned_py.decision import Params, Tuner, Tuning
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

    def __init__(self, params: Params, tuning: Tuning | None = None, npages: int = 0,
                 preamble: tuple[str, ...] = ()):
        self.params = params
        self.tuner: Tuner | None = None if tuning is None else Tuner(params, tuning.total, npages, tuning)
        # DEBUG lines the reference prints before total/sleep/thres (Proxmox VE's "using pss metric").
        self.preamble = tuple(preamble)

    @classmethod
    def from_config(cls, config: configmod.Config) -> "KsmtunedPolicy":
        return cls(ksmtuned_params(config), preamble=start_preamble(config))

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
        return {"policy": self.name, "npages": self.npages, "tuning": asdict(t), "params": asdict(self.params),
                "preamble": list(self.preamble)}


#: Policy name -> class; the configuration will choose among them (today: ksmtuned's rule only).
POLICIES = {KsmtunedPolicy.name: KsmtunedPolicy}


def from_config(config: configmod.Config):
    """The configured policy, not started yet (``start`` it, or let its first decision start it)."""
    return POLICIES[DEFAULT].from_config(config)


def from_state(state: dict):
    """The policy a running daemon published; KeyError, TypeError or ValueError when it is not understood."""
    return POLICIES[state.get("policy", DEFAULT)].from_state(state)
