"""Serving a Simulation as a live tree: the tick loop and control events (the lock: rootlock.py).

``<root>/.sysfs-emu/`` holds what belongs to the emulator itself:

- ``lock``: held (flock) while a sysfs-emu serves the root, containing its pid;
- ``state.json``: simulated time, speed and pid, rewritten each tick (``snapshot`` reads it);
- ``events/``: the control queue.  A file ``NAME.yaml`` holding one scenario event
  (``start: {...}``, ``exit: ID``, ``rewrite: {...}``, ``sysfs: {...}``) is applied at
  the next tick, then replaced by ``NAME.result`` (``ok`` or ``error: ...``).
  ``sysfs-emu event`` writes these and waits for the result.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sysfs_emu.errors import EmuError, OnceLog, ServeError, TreeError
from sysfs_emu.files import read_regular, replace_file
from sysfs_emu.rootlock import RootLock, filesystem_type, holder_pid, state_dir
from sysfs_emu.scenario import parse_yaml
from sysfs_emu.tree import Tree

if TYPE_CHECKING:
    from sysfs_emu.simulation import Simulation

log = logging.getLogger(__name__)

TICK = 0.1  # wall seconds between two looks at the tree
MAX_LAG = 2.0  # wall seconds the simulation may fall behind before it stops catching up
MIN_STEP = 0.001  # simulated seconds: the least a tick advances


@dataclass
class Server:
    """Runs a Simulation at ``speed`` and keeps its tree under ``root`` current."""

    sim: "Simulation"
    root: Path
    speed: float = 1.0
    duration: float | None = None  # simulated seconds to run, None = until stopped
    tick: float = TICK
    clean: bool = False
    scenario_name: str = "idle host"
    stop_event: threading.Event = field(default_factory=threading.Event)
    ready_event: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self.root = Path(self.root)
        self.tree = Tree(self.sim, self.root)
        self.lock = RootLock(self.root)
        self.events_dir = state_dir(self.root) / "events"
        self.tree.scratch_dirs.append(self.events_dir)
        self.achieved_speed: float | None = None
        self._problems = OnceLog(log)
        self._lag_warned = False
        self._chunk: float | None = None  # simulated seconds per advance() call

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        """Serve until stopped or ``duration`` simulated seconds have passed."""
        self.lock.acquire()
        try:
            # state.json appears once the tree is ready; an earlier run's must not say so.
            (state_dir(self.root) / "state.json").unlink(missing_ok=True)
            try:
                self.events_dir.mkdir(exist_ok=True)
                self.tree.create()
            except TreeError as exc:
                raise ServeError(str(exc)) from None
            except PermissionError as exc:
                raise ServeError(f"{self.root} is not writable: {exc.strerror}: {exc.filename}") from None
            self._write_state()
            self.ready_event.set()
            kind = filesystem_type(self.root)
            if kind not in (None, "tmpfs", "ramfs"):
                log.info("%s is on %s: every changed file is replaced each tick, which a tmpfs "
                         "(e.g. /dev/shm) does far faster", self.root, kind)
            log.info("serving %s under %s at %gx; try: ksmtuned-py --root %s status",
                     self.scenario_name, self.root, self.speed, self.root)
            log.info("ksmd's simulated time and CPU follow its per-page costs; costs: %s", self.sim.costs.origin)
            try:
                self._loop()
            except EmuError as exc:  # e.g. a scenario event that runs out of memory
                raise ServeError(f"the simulation stopped at {self.sim.now:.1f}s: {exc}") from None
        finally:
            if self.clean:
                self.tree.remove()
                self._remove_own_files()
            self.lock.release(remove=self.clean)
            if self.clean:
                self._remove_own_dirs()
            self.ready_event.set()

    def _loop(self) -> None:
        sim = self.sim
        end = None if self.duration is None else sim.now + self.duration
        wall0, sim0 = time.monotonic(), sim.now
        while not self.stop_event.is_set():
            started = time.monotonic()
            self._keep_state_dir()
            written = bool(self.tree.apply_writes())
            if self._control() or written:
                self._chunk = None  # new settings or guests: ksmd's cost may have jumped
            target = sim0 + (started - wall0) * self.speed
            if end is not None:
                target = min(target, end)
            self._advance_until(target, started + self.tick)
            # Too far behind: stop owing time, run as fast as this machine can.
            if target - sim.now > self.speed * MAX_LAG:
                self._note_lag((sim.now - sim0) / max(time.monotonic() - wall0, 1e-9))
                wall0, sim0 = time.monotonic(), sim.now
            self.tree.sync()
            self._write_state()
            if end is not None and sim.now >= end:
                break
            self.stop_event.wait(max(0.0, self.tick - (time.monotonic() - started)))

    def _advance_until(self, target: float, deadline: float) -> None:
        """Advance toward ``target`` in chunks sized to take about a quarter tick each, until ``deadline``.

        ksmd's cost per simulated second varies a thousandfold with its settings and
        with how much it merges, so the chunk adapts to the last one's wall time: a
        burst of merging stalls the tree for at most about one chunk.
        """
        sim = self.sim
        if self._chunk is None:
            self._chunk = max(self.speed * self.tick / 64, MIN_STEP)
        while sim.now < target:
            chunk = min(self._chunk, target - sim.now)
            t = time.monotonic()
            sim.advance(chunk)
            took = time.monotonic() - t
            if chunk == self._chunk:
                if took < self.tick / 8:
                    self._chunk *= 2
                elif took > self.tick / 2:
                    self._chunk = max(self._chunk / 4, MIN_STEP)
            if time.monotonic() >= deadline:
                break

    def _note_lag(self, rate: float | None) -> None:
        self.achieved_speed = rate
        if not self._lag_warned:
            self._lag_warned = True
            log.warning("ksmd's work at these settings is more than this machine can simulate at "
                        "--speed %g (about %.3gx now): simulated time runs as fast as it can",
                        self.speed, rate or 0.0)

    def _keep_state_dir(self) -> None:
        """``.sysfs-emu`` removed under us: make it again, and its lock, so a second sysfs-emu stays out."""
        self.tree.keep_dirs()
        if not self.lock.verify():
            raise ServeError(f"{self.root} is served by another sysfs-emu (pid {holder_pid(self.root)}) now; "
                             "stopping (its lock file was removed under this one)")

    # --- control queue -------------------------------------------------------------------

    def _control(self) -> bool:
        """Apply queued events; True when there were any."""
        try:
            names = sorted(n for n in os.listdir(self.events_dir) if n.endswith(".yaml"))
        except FileNotFoundError:  # removed by another program: made again at the next tick
            return False
        applied = False
        for name in names:
            data = self._take_event(name)
            if data is None:
                continue
            applied = True
            result = self.apply_event_bytes(data)
            try:
                replace_file(self.events_dir / (name[: -len(".yaml")] + ".result"), (result + "\n").encode(),
                             tmp=self.events_dir / f".{name}.result.tmp")
            except OSError as exc:
                log.warning("cannot write the result of event %s (%s): %s", name, result, exc.strerror)
        return applied

    def _take_event(self, name: str) -> bytes | None:
        """An event file's bytes, removed from the queue; None for what is not an event file (never blocks on a FIFO)."""
        path = self.events_dir / name
        try:
            data = read_regular(path, 1 << 20)
            path.unlink()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._problems.fail(("event", name), f"ignoring {path}: {exc.strerror}")
            return None
        self._problems.forget(("event", name))
        return data

    def apply_event_bytes(self, data: bytes) -> str:
        """Apply one event file's contents; return ``ok`` or ``error: ...`` (also for bytes that are not UTF-8)."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"error: the event is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        return self.apply_event_text(text)

    def apply_event_text(self, text: str) -> str:
        """Apply one event given as YAML; return ``ok`` or ``error: ...``."""
        try:
            event = parse_yaml(text)
        except EmuError as exc:
            return f"error: the event is not valid YAML: {exc}"
        if not isinstance(event, dict):
            return "error: an event is a mapping such as 'start: {...}' or 'exit: ID'"
        event = {k: v for k, v in event.items() if k != "at"}
        try:
            self.sim.apply(event)
        except EmuError as exc:
            log.warning("event refused: %s", exc)
            return f"error: {exc}"
        except Exception as exc:  # a bug: keep serving, and keep its traceback in the log
            log.exception("event failed: %s", exc)
            return f"error: {exc}"
        log.info("event applied at %.1fs: %s", self.sim.now, json.dumps(event, default=str))
        self.tree.sync()
        return "ok"

    # --- state --------------------------------------------------------------------------

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "scenario": self.scenario_name,
            "speed": self.speed,
            "now": self.sim.now,
            "page_size": self.sim.page_size,
            "cost_origin": self.sim.costs.origin,
        }
        path = state_dir(self.root) / "state.json"
        try:
            replace_file(path, json.dumps(state).encode(), tmp=path.with_name("state.json.tmp"))
        except OSError as exc:  # e.g. a full file system: the tree goes on, said once
            if path.parent.is_dir():  # else: removed, said and made again at the next tick
                self._problems.fail("state", f"cannot write {path}: {exc.strerror}")
        else:
            self._problems.ok("state", f"{path} is written again")

    def _remove_own_files(self) -> None:
        state = state_dir(self.root)
        for name in ("state.json", "state.json.tmp"):
            try:
                os.unlink(state / name)
            except FileNotFoundError:
                pass
        if self.events_dir.is_dir():
            for entry in self.events_dir.iterdir():
                if entry.name.endswith((".result", ".yaml", ".tmp")):
                    entry.unlink(missing_ok=True)
            try:
                self.events_dir.rmdir()
            except OSError:
                pass

    def _remove_own_dirs(self) -> None:
        if self.lock.created_state_dir:
            try:
                state_dir(self.root).rmdir()
            except OSError:
                pass
        if self.lock.created_root:
            try:
                self.root.rmdir()
            except OSError:
                pass


def send_event(root: Path, text: str, timeout: float = 10.0) -> str:
    """Queue an event for the sysfs-emu serving ``root`` and return its result line."""
    root = Path(root)
    if holder_pid(root) is None:
        raise ServeError(f"no sysfs-emu is serving {root}")
    events = state_dir(root) / "events"
    name = f"{time.time_ns()}-{os.getpid()}"
    replace_file(events / f"{name}.yaml", text.encode(), tmp=events / f".{name}.tmp")
    result = events / f"{name}.result"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = result.read_bytes().decode(errors="replace").strip()
        except FileNotFoundError:
            time.sleep(0.02)
            continue
        result.unlink(missing_ok=True)
        return answer
    (events / f"{name}.yaml").unlink(missing_ok=True)
    raise ServeError(f"the sysfs-emu serving {root} did not answer within {timeout:g}s")


def read_state(root: Path) -> dict | None:
    """The served simulation's state (time, speed, pid), or None when none is recorded."""
    try:
        state = json.loads(read_regular(state_dir(Path(root)) / "state.json"))
    except (OSError, ValueError, RecursionError):
        return None
    return state if isinstance(state, dict) else None
