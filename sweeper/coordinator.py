"""The coordinator: a thin layer over the store and the strategies.

It implements :class:`sweeper.protocol.CoordinatorClient`, so embedded agents call it
directly and the HTTP service only translates. It keeps no state of its own beyond caches
of what a sweep's spec compiles to (a spec never changes once stored) and the request ids of
the latest leases (which tell an ask sent again): everything else is read from, and written
to, the store.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from sweeper.assignments import assignment, unneeded_checkpoints
from sweeper.pauses import PauseWatch, process_pauses
from sweeper.planning import Plan, completion, no_result_said, plan_next, target_reached_by, without_result
from sweeper.protocol import (
    CONTINUE,
    AgentInfo,
    Assignment,
    Directive,
    InvalidPointsError,
    LeaseLostError,
    NoTrial,
    NoTrialReason,
    TrialOutcome,
    is_interrupted,
    metric_name_problem,
)
from sweeper.results import best_of
from sweeper.revival import Revival
from sweeper.spec import SweepSpec, parse_sweep
from sweeper.stopping import KnownCurves, StoppingRule, build_rule, decide_for
from sweeper.store.base import InvalidTransitionError, Lease, Store, StoreError, TrialDraft, idle_mark
from sweeper.strategies import Strategy, strategy_class
from sweeper.trials import MetricPoint, Sweep, SweepState, Trial, TrialState, count_states

DEFAULT_LEASE_SECONDS = 30.0
_EXPIRY_INTERVAL = 1.0  # seconds between lease-expiry passes, at most
_IDLE_LOOKS_PER_PASS = 8  # idle sweeps a pass asks whether they are complete, at most
# Compiled specs kept, the most recently used: a long-lived server sees sweeps come and go, and one
# that comes back after its entry was dropped is compiled again from its stored spec.
_KNOWN_SPECS = 256
_KNOWN_REQUESTS = 16384  # request ids of leases kept, the latest: a minute's at full load

log = logging.getLogger(__name__)


class Coordinator:
    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        on_sweep_changed: Sequence[Callable[[str], None]] = (),
        pauses: PauseWatch | None = None,
    ) -> None:
        """``on_sweep_changed``: called with a sweep's id after the store write, when the sweep is
        created or changes state, or one of its trials ends (finished, failed, stopped, lost). Called on
        the request's thread: a listener must return at once; one that raises is logged and ignored.

        ``pauses``: what tells it that this process slept or was stopped; by default the process's
        own watch when ``clock`` is the real one (a clock of the caller's own has no such pauses)."""
        self.store = store
        self.clock = clock
        self.lease_seconds = lease_seconds
        watch = pauses if pauses is not None else process_pauses() if clock is time.time else None
        self._revival = (
            Revival(store, watch, lease_seconds=lease_seconds, clock=clock) if watch is not None else None
        )
        self._lock = threading.Lock()
        self._specs: OrderedDict[str, tuple[SweepSpec, Strategy, StoppingRule | None]] = OrderedDict()
        self._curves = KnownCurves()  # the curves of ended trials, which stopping rules judge by
        self._last_expiry: float | None = None
        # Idle sweeps, and their number of trials and last trial end when last looked at.
        self._idle_checked: dict[str, tuple[int, float | None]] = {}
        self._on_sweep_changed = tuple(on_sweep_changed)
        # Request ids of the latest leases (and of the asks under way): one that comes again was
        # sent again after its answer was lost on the way, whether or not the agent knew (a new
        # connection, unasked), or while the first is under way still.
        self._requests: OrderedDict[str, None] = OrderedDict()

    # --- sweeps -------------------------------------------------------------

    def create_sweep(self, spec: SweepSpec) -> Sweep:
        seed = spec.options.seed if spec.options.seed is not None else secrets.randbits(31)
        sweep = self.store.create_sweep(
            spec=dict(spec.raw), method=spec.method, name=spec.name, seed=seed, now=self.clock()
        )
        self._sweep_changed(sweep.id)
        return sweep

    def set_sweep_state(self, sweep_id: str, state: SweepState) -> Sweep:
        self._expire_before_reading()  # a trial whose agent died is lost, not left running
        if state is SweepState.RUNNING:
            self._check_finished_sweep_has_more(sweep_id)
        sweep = self.store.set_sweep_state(sweep_id, state, now=self.clock())
        if sweep.state.is_terminal:
            self._curves.forget(sweep_id)
        if state is SweepState.CANCELLED:
            for trial in self.store.list_trials(sweep_id, states=[TrialState.RUNNING]):
                self.store.request_stop(trial.id, "sweep cancelled")
        self._sweep_changed(sweep_id)
        if state is SweepState.RUNNING:  # its last trials may have ended while it was stopped or paused
            self._finish_sweep_if_complete(sweep_id)
            sweep = self.store.get_sweep(sweep_id)
        return sweep

    def _check_finished_sweep_has_more(self, sweep_id: str) -> None:
        """A finished sweep is resumed only to run again the configurations without a result
        (every attempt failed or was lost: retries count afresh from a resume)."""
        sweep = self.store.get_sweep(sweep_id)
        if sweep.state is not SweepState.FINISHED:
            return
        spec = self._compiled(sweep)[0]
        trials = self.store.list_trials(sweep_id)
        if not without_result(spec, trials):
            reached = target_reached_by(spec, trials)
            why = (
                f"trial {reached.number} reached the metric target"
                if reached
                else "every configuration has a result"
            )
            raise InvalidTransitionError(f"sweep {sweep_id} is finished and nothing would run again: {why}")

    def get_sweep(self, sweep_id: str) -> Sweep:
        self._expire_before_reading()  # the state read is the one after the dead agents' trials
        return self.store.get_sweep(sweep_id)

    def list_sweeps(self) -> list[Sweep]:
        self._expire_before_reading()
        return self.store.list_sweeps()

    def spec_of(self, sweep_id: str) -> SweepSpec:
        return self._compiled(self.store.get_sweep(sweep_id))[0]

    def _compiled(self, sweep: Sweep) -> tuple[SweepSpec, Strategy, StoppingRule | None]:
        with self._lock:
            found = self._compiled_before(sweep.id)
            if found is None:
                spec = parse_sweep(sweep.spec, source=f"sweep {sweep.id}")
                found = self._specs[sweep.id] = (spec, strategy_class(spec.method)(spec), build_rule(spec))
                while len(self._specs) > _KNOWN_SPECS:
                    self._specs.popitem(last=False)
            return found

    def _compiled_by_id(self, sweep_id: str) -> tuple[SweepSpec, Strategy, StoppingRule | None]:
        """As :meth:`_compiled`, reading the sweep only when its spec is not at hand (it never changes)."""
        with self._lock:
            found = self._compiled_before(sweep_id)
        return found if found is not None else self._compiled(self.store.get_sweep(sweep_id))

    def _compiled_before(self, sweep_id: str) -> tuple[SweepSpec, Strategy, StoppingRule | None] | None:
        """The sweep's compiled spec if it is at hand, marked as the most recently used (under _lock)."""
        found = self._specs.get(sweep_id)
        if found is not None:
            self._specs.move_to_end(sweep_id)
        return found

    # --- the agent protocol -------------------------------------------------

    def next_trial(
        self,
        sweep_id: str,
        agent: AgentInfo,
        *,
        request_id: str | None = None,
        resent: bool = False,
        new_lease: bool = True,
    ) -> Assignment | NoTrial:
        """Lease the sweep's next trial to ``agent``, or say why there is none.

        ``request_id`` makes asking again safe when an answer was lost on the way (a proxy that
        dropped it, a client that stopped waiting): it becomes the lease's id, and an ask that
        is ``resent`` with it gets the trial that ask leased, if that trial is still running
        under the agent, instead of a second one left running with nobody at its end.
        ``new_lease`` false: that trial or none, never a new one (an agent that is stopping
        asks so, to end the trial)."""
        now, mark = self._lease_time()
        self._expire_leases(now)
        if not new_lease:
            if request_id is None:
                raise ValueError("new_lease=False needs the request_id of the ask whose trial it wants")
            return self._leased_by(sweep_id, agent, request_id, now)
        # Looked for under the sweep's lock, where an ask with the same id still under way (the
        # client stopped waiting for it; a batch holds it) has leased, or waits until this one has.
        again = request_id is not None and (self._asked_before(request_id) or resent)
        # The sweep's state is read under new_trial's lock; a sweep that hands out no trials
        # is answered from a fresh read below.
        spec, strategy, _ = self._compiled_by_id(sweep_id)
        plans: list[Plan] = []
        seen: list[tuple[Sequence[Trial], float]] = []  # the history each plan was made from, and
        # when the sweep was last resumed
        # The trial an earlier ask with request_id leased, still running, and the history it is in.
        given: list[tuple[Trial, Sequence[Trial]]] = []

        def decide(locked: Sweep, trials: Sequence[Trial]) -> TrialDraft | None:
            given.clear()  # (a write that failed is tried again: what it decided then is void)
            if again and (mine := _leased_to(trials, agent.name, request_id)) is not None:
                given.append((mine, trials))
                return None
            since = resumed_at(locked)
            plans.append(plan := plan_next(spec, strategy, trials, locked.seed, agent.name, since))
            seen.append((trials, since))
            return plan.draft

        lease = Lease(
            agent=agent.name,
            host=agent.host,
            lease_id=request_id or secrets.token_hex(8),
            expires_at=now + self.lease_seconds,
        )
        trial = self.store.new_trial(
            sweep_id,
            decide,
            lease=lease,
            now=now,
            history_of=spec.metric.name if strategy.needs_history and spec.metric else None,
        )
        if trial is not None:
            if self._revival is not None and self._revival.owes(mark):  # rare: after a pause
                # The leases held when it began may have had their time without this one, new.
                self.store.renew_lease(
                    trial.id, lease.lease_id, expires_at=self.clock() + self.lease_seconds, now=now
                )
            # Worked out once the lease's transaction has ended, from the history it was made from.
            history, since = seen[-1]
            discard = unneeded_checkpoints(spec, history, since)
            return assignment(spec, trial, lease.lease_id, self.lease_seconds, history, discard)
        if given:
            if (again_given := self._given_again(spec, *given[-1], now)) is not None:
                return again_given
            return self.next_trial(sweep_id, agent)  # it ended meanwhile: a new lease, a new id
        if request_id is not None:  # it leased nothing: its id need not be remembered
            self._forget(request_id)
        plan = plans[-1] if plans else None
        if plan is None:  # the sweep does not hand out trials (or stopped doing so since it was read)
            sweep = self.store.get_sweep(sweep_id)
            if sweep.state is SweepState.FINISHED:
                trials = self.store.list_trials(sweep_id)
                why = completion(spec, strategy, trials, sweep.seed, resumed_at(sweep))
                said = f"is complete: {why}" if why is not None else "is finished"
                return NoTrial(
                    NoTrialReason.DONE, f"sweep {sweep_id} {said}{_no_result(spec, sweep_id, trials)}"
                )
            return _refusal(sweep) or NoTrial(NoTrialReason.WAIT, "sweep busy")
        if plan.done:
            self._finish_sweep_if_complete(sweep_id)
            said = f"is complete: {plan.reason}{_no_result(spec, sweep_id, seen[-1][0])}"
            return NoTrial(NoTrialReason.DONE, f"sweep {sweep_id} {said}")
        return NoTrial(NoTrialReason.WAIT, plan.reason, retry_after=1.0)

    def _leased_by(
        self, sweep_id: str, agent: AgentInfo, request_id: str, now: float
    ) -> Assignment | NoTrial:
        """``new_lease`` false: the trial the ask with ``request_id`` leased to ``agent``, if it
        still runs (in a paused or stopped sweep too); never a new one."""
        trials = self.store.list_trials(sweep_id)
        if (mine := _leased_to(trials, agent.name, request_id)) is not None:
            spec = self._compiled_by_id(sweep_id)[0]
            if (again := self._given_again(spec, mine, trials, now)) is not None:
                return again
        return NoTrial(NoTrialReason.WAIT, f"no trial of sweep {sweep_id} runs under lease {request_id}")

    def _asked_before(self, request_id: str) -> bool:
        with self._lock:
            if request_id in self._requests:
                return True
            self._requests[request_id] = None
            if len(self._requests) > _KNOWN_REQUESTS:
                self._requests.popitem(last=False)
        return False

    def _forget(self, request_id: str) -> None:
        with self._lock:
            self._requests.pop(request_id, None)

    def _given_again(
        self, spec: SweepSpec, trial: Trial, history: Sequence[Trial], now: float
    ) -> Assignment | None:
        """``trial``, which an earlier ask with its lease id leased, for the agent asking again;
        its lease starts afresh, as the agent starts it only now. None if it ended meanwhile."""
        assert trial.lease_id is not None
        try:
            self.store.renew_lease(trial.id, trial.lease_id, expires_at=now + self.lease_seconds, now=now)
        except LeaseLostError:
            return None
        log.info("trial %s asked for again by %s: it gets the trial it was given", trial.number, trial.agent)
        # The checkpoints to discard are left for the next lease to name.
        return assignment(spec, trial, trial.lease_id, self.lease_seconds, history, ())

    def unanswered_trial(self, sweep_id: str, agent: AgentInfo) -> None:
        return None  # called in process, every ask is answered

    def heartbeat(self, trial_id: int, lease_id: str, *, interrupted: str | None = None) -> Directive:
        now = self._now()
        if interrupted is not None and not is_interrupted(interrupted):
            raise ValueError(f"not an interruption: {interrupted[:80]!r}")
        trial = self.store.renew_lease(
            trial_id, lease_id, expires_at=now + self.lease_seconds, now=now, interrupted=interrupted
        )
        return _directive(trial)

    def report_metrics(self, trial_id: int, lease_id: str, points: Sequence[MetricPoint]) -> Directive:
        for point in points:  # as the HTTP server checks them, so both ways store the same
            if (problem := metric_name_problem(point.name)) is not None:
                raise InvalidPointsError(f"metric {point.name[:80]!r}: {problem}")
        now = self._now()
        trial = self.store.report_metrics(
            trial_id, lease_id, points, expires_at=now + self.lease_seconds, now=now
        )
        trial = self._apply_stopping_rule(trial, points)
        return _directive(trial)

    def _apply_stopping_rule(self, trial: Trial, points: Sequence[MetricPoint]) -> Trial:
        """Ask the sweep's stopping rule about a trial that just reported; record a stop it decides,
        so the directive of this very response carries it."""
        if trial.stop_requested or not points:
            return trial
        rule = self._compiled_by_id(trial.sweep_id)[2]
        decision = decide_for(rule, self.store, trial, points, self._curves) if rule is not None else None
        return self.store.request_stop(trial.id, decision.reason) if decision is not None else trial

    def finish_trial(self, trial_id: int, lease_id: str, outcome: TrialOutcome) -> None:
        trial, running = self.store.end_trial(
            trial_id,
            lease_id,
            outcome.state,
            now=self._now(),
            exit_code=outcome.exit_code,
            stderr_tail=outcome.stderr_tail,
            stop_reason=outcome.stop_reason,
        )
        if not running:  # in a busy sweep other trials still run: nothing more to read
            self._finish_idle_sweep_if_complete(trial.sweep_id)
        self._sweep_changed(trial.sweep_id)

    # --- reading ------------------------------------------------------------

    def trials(
        self, sweep_id: str, *, with_history: bool = False, after: int = 0, limit: int | None = None
    ) -> list[Trial]:
        self._expire_before_reading()
        return self.store.list_trials(sweep_id, with_history=with_history, after=after, limit=limit)

    def trial_counts(self, sweep_id: str) -> dict[TrialState, int]:
        # The store keeps what it read of a sweep, and counts it as it reads: nothing is sent.
        return dict(count_states(self.trials(sweep_id)))

    def best_trial(self, sweep_id: str) -> Trial | None:
        spec = self.spec_of(sweep_id)
        return best_of(spec, self.store.list_trials(sweep_id))

    # --- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Close the store it works on (its connections and files), as for the coordinator of
        :func:`sweeper.connect`, which opened the store for it. A caller that made the coordinator
        on a store it goes on using closes the store itself instead."""
        self.store.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------

    def _expire_leases(self, now: float) -> None:
        # A write transaction on every lease request serialises busy fleets; a pass at most every
        # _EXPIRY_INTERVAL finds the same lost trials (a lease only runs out as time passes).
        interval = min(_EXPIRY_INTERVAL, self.lease_seconds / 10)
        if self._last_expiry is not None and 0 <= now - self._last_expiry < interval:
            return
        self._last_expiry = now
        lost = self.store.expire_leases(now=now)
        for sweep_id in dict.fromkeys(trial.sweep_id for trial in lost):
            self._sweep_changed(sweep_id)
            self._finish_sweep_if_complete(sweep_id)  # the lost trial may have been the last one
        self._finish_idle_sweeps()

    def _finish_idle_sweeps(self) -> None:
        """Finish the sweeps that are complete with no trial running, looking at each again only
        once it has changed (another trial of it has run). A trial's end finishes its sweep when
        it leaves none running; but two programs on one PostgreSQL database (two servers, or
        agents on the database itself) that end a sweep's last two trials at once each count the
        other's trial as still running, and neither does. This pass does, even with no agent left
        to ask. A look counts once what it did is committed: in a batch given up, it is made again."""
        idle = self.store.idle_sweeps()
        for sweep_id in [s for s in list(self._idle_checked) if s not in idle]:  # a copy: threads mark
            self._idle_checked.pop(sweep_id, None)
        # Each look marks its sweep as looked at (:meth:`_finish_idle_sweep_if_complete`), as does
        # the look a trial's end makes: the pass does not repeat it.
        looks = 0
        for sweep_id, changed in idle.items():
            if changed[1] is None or self._idle_checked.get(sweep_id) == changed:
                continue  # no trial has ended, or nothing changed since the last look
            if looks == _IDLE_LOOKS_PER_PASS:
                break  # the next pass looks at the rest (after a restart every idle sweep is new)
            looks += 1
            try:
                self._finish_idle_sweep_if_complete(sweep_id)
            except StoreError:
                raise
            except Exception:  # one sweep's fault must not stop the pass, nor the lease that ran it
                log.warning("could not tell whether sweep %s is complete", sweep_id, exc_info=True)
                self._idle_checked[sweep_id] = changed  # now: it would fail again, batch or not

    def _expire_before_reading(self) -> None:
        """Leases also run out when trials are read: with no server and no agent left asking for
        work (``sweeper status`` after the last agent was killed), a dead agent's trial would
        read "running" for ever. A store too busy for the write leaves it to the next pass."""
        try:
            self._expire_leases(self._now())
        except Exception as exc:  # a busy store, a read-only role or standby: the read goes on
            log.debug("lease expiry skipped: %s", exc)

    def expire_leases(self) -> None:
        """Mark trials whose agents stopped heartbeating as lost (the server calls this periodically)."""
        self._expire_leases(self._now())

    def _now(self) -> float:
        return self._lease_time()[0]

    def _lease_time(self) -> tuple[float, int]:
        """The time for a lease decision: the clock's, or after a pause of this process, the moment
        it began until the leases have had the time it owes them (:mod:`sweeper.revival`); and a
        mark for :meth:`Revival.owes`."""
        return self._revival.time() if self._revival is not None else (self.clock(), 0)

    def _finish_sweep_if_complete(self, sweep_id: str) -> None:
        if self.store.count_trials(sweep_id, states=[TrialState.RUNNING]):
            return  # the common case in a busy sweep, answered without loading a trial
        self._finish_idle_sweep_if_complete(sweep_id)

    def _finish_idle_sweep_if_complete(self, sweep_id: str) -> None:
        """:meth:`_finish_sweep_if_complete` for a sweep with no trial running when last counted."""
        sweep = self.store.get_sweep(sweep_id)
        if sweep.state is not SweepState.RUNNING:
            return
        spec, strategy, _ = self._compiled(sweep)
        trials = self.store.list_trials(sweep_id)
        if count_states(trials).get(TrialState.RUNNING):
            return
        # Looked at as it is now: the lease-expiry pass looks again once it has changed. Marked once
        # committed, so a batch given up looks again.
        looked = idle_mark(trials)
        self.store.after_commit(functools.partial(self._idle_checked.__setitem__, sweep_id, looked))
        if completion(spec, strategy, trials, sweep.seed, resumed_at(sweep)) is not None:
            try:
                self.store.set_sweep_state(sweep_id, SweepState.FINISHED, now=self.clock())
            except InvalidTransitionError:  # cancelled or paused meanwhile: that decision stands
                return
            self._curves.forget(sweep_id)
            self._sweep_changed(sweep_id)

    def _sweep_changed(self, sweep_id: str) -> None:
        """Tell the listeners, once the change is committed: they read the store from threads of
        their own, which see nothing of a batch (:meth:`Store.batch`) before it commits."""
        if self._on_sweep_changed:
            self.store.after_commit(lambda: self._tell_listeners(sweep_id))

    def _tell_listeners(self, sweep_id: str) -> None:
        for listener in self._on_sweep_changed:
            try:
                listener(sweep_id)
            except Exception:  # a listener never fails the write it follows
                log.exception("sweep %s: a change listener failed", sweep_id)


def _leased_to(trials: Sequence[Trial], agent: str, lease_id: str | None) -> Trial | None:
    """The running trial that ``agent`` holds under ``lease_id``, if any."""
    for trial in trials:
        if trial.lease_id == lease_id and trial.agent == agent and trial.state is TrialState.RUNNING:
            return trial
    return None


def _refusal(sweep: Sweep) -> NoTrial | None:
    match sweep.state:
        case SweepState.RUNNING:
            return None
        case SweepState.PAUSED:
            return NoTrial(NoTrialReason.WAIT, f"sweep {sweep.id} is paused", retry_after=2.0)
        case SweepState.FINISHED:
            return NoTrial(NoTrialReason.DONE, f"sweep {sweep.id} is finished")
        case SweepState.STOPPED:
            again = f"'sweeper resume {sweep.id}' takes it up again"
            return NoTrial(NoTrialReason.STOPPED, f"sweep {sweep.id} was stopped ({again})")
        case _:
            return NoTrial(NoTrialReason.STOPPED, f"sweep {sweep.id} was {sweep.state.value}")


def _no_result(spec: SweepSpec, sweep_id: str, trials: Sequence[Trial]) -> str:
    """What a complete sweep says of its configurations without a result; nothing when there are none."""
    said = no_result_said(spec, sweep_id, trials)
    return f"; {said}" if said else ""


def resumed_at(sweep: Sweep) -> float:
    """When a running sweep last became running (its state's last change): the attempts made
    before a resume use up no retries (:func:`sweeper.planning.may_run_again`)."""
    changed = sweep.state is SweepState.RUNNING and sweep.updated_at > sweep.created_at
    return sweep.updated_at if changed else -math.inf


def _directive(trial: Trial) -> Directive:
    if trial.stop_requested:
        return Directive(stop=True, reason=trial.stop_requested)
    return CONTINUE
