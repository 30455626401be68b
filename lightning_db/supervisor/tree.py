"""The supervision tree in the Erlang/OTP sense (DESIGN.md §5).

Which process runs what: a tree lives in the supervisor process (DESIGN §2;
never the caller's process). Its owner drives it, either by calling
``Supervisor.poll()`` from its own loop or by starting a ``Monitor`` thread
that calls ``poll()`` every interval. Children are abstract (``Child``): the
shard layer plugs in actor processes; ``process.py`` adapts a
``multiprocessing`` process or a bare pid.

The model. A supervisor holds an ordered list of child specs. It starts the
children in that order and stops them in reverse. When a child exits, its
restart type decides whether it comes back (``permanent``: always;
``transient``: only after an abnormal exit; ``temporary``: never, and it is
forgotten), and the strategy decides which siblings come back with it
(``one_for_one``: none; ``one_for_all``: every one; ``rest_for_one``: those
started after it). Siblings are stopped in reverse order, then the group is
started in order. A replacement is never started while the old child still
runs: a child reported dead that is still alive is killed first (two
processes must never own one shard's engine).

More than ``intensity`` restarts within ``period`` seconds means restarting
does not help: the supervisor stops all its children and gives up with
``RestartIntensityExceeded``. A nested supervisor gives up to its parent,
which treats it as a child that exited abnormally (and so may restart the
whole subtree, counting against its own intensity); the root calls
``on_escalate`` (the owner shuts the database down), or raises when there is
none.

A child is also taken for dead when it stops answering heartbeats:
``heartbeat(child) -> bool`` is asked every ``heartbeat_interval`` seconds,
and ``max_missed_heartbeats`` misses in a row (a SIGSTOPped or deadlocked
worker) get the child killed and handled as an exit with reason ``"hung"``.

REQUIRES: every public method takes the tree's lock (one RLock shared by the
root and all nested supervisors, so an escalation running from a child
supervisor into its parent cannot deadlock). ``heartbeat`` runs under that
lock and must return quickly. Every time comes from the injected ``clock``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument, RestartIntensityExceeded
from .spec import (
    HUNG,
    ONE_FOR_ALL,
    ONE_FOR_ONE,
    SHUTDOWN,
    TEMPORARY,
    TRANSIENT,
    Child,
    ChildInfo,
    ChildSpec,
    Exit,
    SupervisorSpec,
    check_limits,
    is_normal_exit,
)

log = logging.getLogger("lightning_db.supervisor")

# Child slot states / supervisor states.
RUNNING, PENDING, STOPPED, FAILED, NEW = "running", "pending", "stopped", "failed", "new"


@dataclass(eq=False)
class _Slot:
    spec: ChildSpec | SupervisorSpec
    child: Child | None = None
    state: str = PENDING
    restarts: int = 0
    last_exit: object = None
    missed: int = 0
    next_beat: float = 0.0
    kills: int = 0


def exit_reason_of(child: Child) -> object:
    """The reason a dead child gives, or ``"exited"`` (abnormal) if unknown."""
    reason = getattr(child, "exit_reason", None)
    return "exited" if reason is None else reason


class Supervisor:
    """A supervisor (the root, or built by its parent from a SupervisorSpec).

    ``on_escalate(exc)`` is called at the root when intensity is exceeded,
    after every child was stopped; without it ``RestartIntensityExceeded`` is
    raised from the call that hit the limit. A Supervisor is itself a
    ``Child`` (pid None: it lives in its parent's process).
    """

    def __init__(
        self,
        children: Sequence[ChildSpec | SupervisorSpec],
        strategy: str = ONE_FOR_ONE,
        intensity: int = 3,
        period: float = 5.0,
        *,
        id: str = "root",
        clock: Callable[[], float] = time.monotonic,
        on_escalate: Callable[[RestartIntensityExceeded], object] | None = None,
        heartbeat: Callable[[Child], bool] | None = None,
        heartbeat_interval: float = 1.0,
        max_missed_heartbeats: int = 3,
        _lock: Any = None,
    ) -> None:
        check_limits(id, strategy, intensity, period)
        if not isinstance(heartbeat_interval, (int, float)) or heartbeat_interval <= 0:
            raise InvalidArgument(f"heartbeat_interval must be > 0 seconds, got {heartbeat_interval!r}")
        if not isinstance(max_missed_heartbeats, int) or max_missed_heartbeats < 1:
            raise InvalidArgument(f"max_missed_heartbeats must be an integer >= 1, got {max_missed_heartbeats!r}")
        self.id, self.strategy, self.intensity, self.period = id, strategy, intensity, float(period)
        self._slots: list[_Slot] = []
        for spec in children:
            if not isinstance(spec, (ChildSpec, SupervisorSpec)):
                raise InvalidArgument(f"supervisor {id!r}: children must be ChildSpec or SupervisorSpec, got {spec!r}")
            if any(s.spec.id == spec.id for s in self._slots):
                raise InvalidArgument(f"supervisor {id!r}: duplicate child id {spec.id!r}")
            self._slots.append(_Slot(spec))
        self._known = {s.spec.id for s in self._slots}
        self._clock, self._on_escalate = clock, on_escalate
        self._heartbeat, self._beat_every = heartbeat, float(heartbeat_interval)
        self._max_missed = max_missed_heartbeats
        self._lock = _lock or threading.RLock()
        self._restarts: collections.deque[float] = collections.deque()
        self._restarts_total = 0
        self._state = NEW
        self.exit_reason: object = None

    # --- the Child protocol (for a nested supervisor) ---------------------------------

    @property
    def pid(self) -> int | None:
        return None

    def is_alive(self) -> bool:
        return self._state == RUNNING

    def kill(self) -> None:
        with self._lock:
            self._state, self.exit_reason = STOPPED, "killed"
            for slot in reversed(self._slots):
                child, slot.child, slot.state = slot.child, None, STOPPED
                if child is not None:
                    _quietly(child.kill, f"kill child {slot.spec.id!r}")

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> Supervisor:
        """Start every child in order. If one fails to start, those already
        started are stopped in reverse and its exception propagates."""
        with self._lock:
            if self._state != NEW:
                raise InvalidArgument(f"supervisor {self.id!r} was already started (state {self._state})")
            self._state = RUNNING
            for i, slot in enumerate(self._slots):
                try:
                    self._start_slot(slot)
                except BaseException:
                    self._state, self.exit_reason = STOPPED, SHUTDOWN
                    for done in reversed(self._slots[:i]):
                        self._stop_slot(done)
                    raise
            return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop every child in reverse start order (each within its spec's
        shutdown_timeout, then killed). Idempotent. *timeout* is accepted for
        the Child protocol; the specs' timeouts apply."""
        with self._lock:
            if self._state in (STOPPED, FAILED):
                return
            self._state, self.exit_reason = STOPPED, SHUTDOWN
            for slot in reversed(self._slots):
                self._stop_slot(slot)

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- events --------------------------------------------------------------------------

    def child_exited(self, id: str, reason: object, *, pid: int | None = None) -> bool:
        """Tell the supervisor that child *id* exited with *reason*; apply
        the restart type and strategy. Returns False when the report is stale
        (the child is not running, or *pid* names an earlier incarnation)."""
        with self._lock:
            slot = next((s for s in self._slots if s.spec.id == id), None)
            if slot is None and id not in self._known:
                raise InvalidArgument(f"supervisor {self.id!r} has no child {id!r}")
            if self._state != RUNNING or slot is None or slot.state != RUNNING:
                return False
            if pid is not None and slot.child is not None and slot.child.pid != pid:
                return False
            self._exit(slot, reason)
            return True

    def poll(self) -> list[Exit]:
        """One round of monitoring: nested supervisors poll their children,
        dead workers are handled as exits, due heartbeats are asked. Returns
        the exits handled, in the order they were seen."""
        with self._lock:
            events: list[Exit] = []
            for slot in list(self._slots):
                if self._state != RUNNING:
                    break
                child = slot.child
                if slot.state != RUNNING or child is None:
                    continue
                if isinstance(child, Supervisor):
                    events.extend(child.poll())
                    if child.is_alive() or slot.child is not child:
                        continue
                if not child.is_alive():
                    reason = exit_reason_of(child)
                    events.append(Exit(self.id, slot.spec.id, reason))
                    self._exit(slot, reason)
                elif self._heartbeat is not None and self._clock() >= slot.next_beat:
                    if self._beat(slot, child):
                        events.append(Exit(self.id, slot.spec.id, HUNG))
                        self._exit(slot, HUNG)
            return events

    # --- reports -------------------------------------------------------------------------

    def which_children(self) -> list[ChildInfo]:
        with self._lock:
            return [ChildInfo(s.spec.id, s.child, _kind(s), s.spec.restart, s.state) for s in self._slots]

    def count_children(self) -> dict[str, int]:
        """OTP's counts: specs, active (running), supervisors, workers."""
        with self._lock:
            sups = sum(1 for s in self._slots if isinstance(s.spec, SupervisorSpec))
            return {"specs": len(self._slots), "active": sum(1 for s in self._slots if s.state == RUNNING),
                    "supervisors": sups, "workers": len(self._slots) - sups}

    def stats(self) -> dict[str, Any]:
        """Plain data, no I/O: state, restarts, and per child its state,
        restarts, last exit reason (repr), missed heartbeats and hang kills."""
        with self._lock:
            children = {}
            for s in self._slots:
                entry = {"type": _kind(s), "state": s.state, "restart": s.spec.restart,
                         "pid": s.child.pid if s.child is not None else None,
                         "restarts": s.restarts, "last_exit": _describe(s.last_exit),
                         "missed_heartbeats": s.missed, "hang_kills": s.kills}
                if isinstance(s.child, Supervisor):
                    entry["supervisor"] = s.child.stats()
                children[s.spec.id] = entry
            return {"id": self.id, "state": self._state, "strategy": self.strategy,
                    "intensity": self.intensity, "period": self.period,
                    "restarts": self._restarts_total, "exit_reason": _describe(self.exit_reason),
                    "children": children}

    # --- internals (lock held) -----------------------------------------------------------

    def _start_slot(self, slot: _Slot) -> None:
        spec = slot.spec
        if isinstance(spec, SupervisorSpec):
            child: Child = Supervisor(
                spec.children, spec.strategy, spec.intensity, spec.period, id=spec.id, clock=self._clock,
                heartbeat=self._heartbeat, heartbeat_interval=self._beat_every,
                max_missed_heartbeats=self._max_missed, _lock=self._lock)
            child._on_escalate = lambda exc, sup=child: self._nested_failed(spec.id, sup, exc)
            child.start()
        else:
            child = spec.start()
            if not isinstance(child, Child):
                raise InvalidArgument(f"child {spec.id!r}: start() returned {child!r}, which is not a Child")
        slot.child, slot.state, slot.missed = child, RUNNING, 0
        slot.next_beat = self._clock() + self._beat_every

    def _stop_slot(self, slot: _Slot) -> None:
        child, slot.child, slot.state = slot.child, None, STOPPED
        if child is None:
            return
        timeout = slot.spec.shutdown_timeout if isinstance(slot.spec, ChildSpec) else None
        _quietly(lambda: child.stop(timeout), f"stop child {slot.spec.id!r}")
        _quietly(lambda: child.is_alive() and child.kill(), f"kill child {slot.spec.id!r}")

    def _beat(self, slot: _Slot, child: Child) -> bool:
        """Ask one heartbeat; True when the child is now taken for hung (and killed)."""
        slot.next_beat = self._clock() + self._beat_every
        try:
            answered = bool(self._heartbeat(child))  # type: ignore[misc]
        except Exception:
            log.warning("supervisor %r: heartbeat of %r raised", self.id, slot.spec.id, exc_info=True)
            answered = False
        if answered:
            slot.missed = 0
            return False
        slot.missed += 1
        if slot.missed < self._max_missed:
            return False
        log.error("supervisor %r: child %r missed %d heartbeats; killing it", self.id, slot.spec.id, slot.missed)
        slot.kills += 1
        _quietly(child.kill, f"kill hung child {slot.spec.id!r}")
        return True

    def _nested_failed(self, id: str, sup: Supervisor, exc: RestartIntensityExceeded) -> None:
        slot = next((s for s in self._slots if s.spec.id == id), None)
        if self._state == RUNNING and slot is not None and slot.child is sup and slot.state == RUNNING:
            self._exit(slot, exc)

    def _exit(self, slot: _Slot, reason: object) -> None:
        """Handle one exit; a replacement that fails to start is handled as
        the next exit (and counts against the intensity too)."""
        pending = [(slot, reason)]
        while pending and self._state == RUNNING:
            slot, reason = pending.pop(0)
            old, slot.child = slot.child, None
            if old is not None:
                _quietly(lambda old=old: old.is_alive() and old.kill(), f"kill exited child {slot.spec.id!r}")
            slot.last_exit = reason
            restart = slot.spec.restart
            if restart == TEMPORARY or (restart == TRANSIENT and is_normal_exit(reason)):
                log.info("supervisor %r: child %r exited (%s), not restarted", self.id, slot.spec.id,
                         _describe(reason))
                slot.state = STOPPED
                if restart == TEMPORARY:
                    self._slots.remove(slot)
                continue
            if not self._count_restart():
                self._give_up(slot, reason)
                return
            log.warning("supervisor %r: child %r exited (%s); %s restart", self.id, slot.spec.id,
                        _describe(reason), self.strategy)
            slot.restarts += 1
            slot.state = PENDING
            group = self._group(slot)
            for sib in reversed(group):
                if sib is not slot and sib.state == RUNNING:
                    self._stop_slot(sib)
                    if sib.spec.restart == TEMPORARY:
                        self._slots.remove(sib)
                    else:
                        sib.state = PENDING
            for member in group:
                if member.state == PENDING and member in self._slots:
                    try:
                        self._start_slot(member)
                    except Exception as exc:
                        log.error("supervisor %r: restarting child %r failed: %r", self.id, member.spec.id, exc)
                        pending.append((member, exc))
                        break

    def _group(self, slot: _Slot) -> list[_Slot]:
        if self.strategy == ONE_FOR_ONE:
            return [slot]
        if self.strategy == ONE_FOR_ALL:
            return list(self._slots)
        return self._slots[self._slots.index(slot):]

    def _count_restart(self) -> bool:
        """Record a restart now; False when that makes more than intensity
        restarts within the last period seconds."""
        now = self._clock()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] <= now - self.period:
            self._restarts.popleft()
        self._restarts_total += 1
        return len(self._restarts) <= self.intensity

    def _give_up(self, slot: _Slot, reason: object) -> None:
        exc = RestartIntensityExceeded(
            f"supervisor {self.id!r} gave up: more than {self.intensity} restart(s) within {self.period:g} s; "
            f"last exit: child {slot.spec.id!r} ({_describe(reason)})",
            supervisor=self.id, child=slot.spec.id, reason=reason)
        if isinstance(reason, BaseException):
            exc.__cause__ = reason
        log.error("%s", exc)
        self._state, self.exit_reason = FAILED, exc
        for s in reversed(self._slots):
            self._stop_slot(s)
        if self._on_escalate is None:
            raise exc
        self._on_escalate(exc)


def _kind(slot: _Slot) -> str:
    return "supervisor" if isinstance(slot.spec, SupervisorSpec) else "worker"


def _describe(reason: object) -> str | None:
    if reason is None or isinstance(reason, str):
        return reason
    return repr(reason)


def _quietly(action: Callable[[], object], what: str) -> None:
    """Stopping and killing go on past a child that misbehaves; it is logged."""
    try:
        action()
    except Exception:
        log.warning("supervisor: %s raised", what, exc_info=True)
