"""What the daemon says once per change, not every cycle: merged memory that would not fit back
if the guests wrote it, and KSM knobs another program changed between cycles."""

from __future__ import annotations

import logging

from ksmtuned_py.report import CycleReport, human_bytes

log = logging.getLogger(__name__)


class Notices:
    """A cycle listener that logs each of these conditions when it appears, changes or goes."""

    def __init__(self) -> None:
        self._risk: bool | None = None
        self._others: frozenset[str] = frozenset()
        self.other_writer: dict | None = None  # the last change seen: {"time", "changes"} (published)

    def __call__(self, report: CycleReport) -> None:
        self.unmerge(report)
        self.writers(report)

    def unmerge(self, report: CycleReport) -> None:
        risk = report.unmerge_risk
        if risk is None or risk == self._risk:
            return
        need, room = human_bytes(report.unmerge_need_bytes), human_bytes(report.unmerge_room_bytes)
        if risk:
            log.warning("unmerge risk: KSM has merged %s that the guests would need back if they wrote it, "
                        "more than MemAvailable + SwapFree (%s): the host could run out of memory",
                        need, room, extra={"KSM_UNMERGE_NEED": report.unmerge_need_bytes,
                                           "KSM_UNMERGE_ROOM": report.unmerge_room_bytes})
        elif self._risk:
            log.info("unmerge risk gone: merged %s fits in MemAvailable + SwapFree (%s)", need, room)
        self._risk = risk

    def writers(self, report: CycleReport) -> None:
        names = frozenset(change.split(" ", 1)[0] for change in report.knobs_changed)
        if report.knobs_changed:
            self.other_writer = {"time": report.time, "changes": list(report.knobs_changed)}
        if names == self._others:
            return
        if names:
            log.warning("another program changed %s between cycles (%s): tuned, KubeVirt, Harvester or a second "
                        "tuner? The daemon writes its own values each cycle, so the two fight over KSM",
                        ", ".join(sorted(names)), "; ".join(report.knobs_changed),
                        extra={"KSM_OTHER_WRITER": ",".join(sorted(names))})
        else:
            log.info("the KSM knobs kept the daemon's values this cycle")
        self._others = names
