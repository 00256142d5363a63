"""The trials of each sweep read before, so a lease (or a listing of a sweep's trials) reads only
what changed.

A lease reads every trial of its sweep under the sweep's lock. Ended trials never change again,
so only the trials added since the last read, and those that were running then, are read again;
and a running trial's row is converted again only where it changed.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, bindparam, select

from sweeper.store import rows
from sweeper.store.schema import trials
from sweeper.trials import CountedTrials, Trial, TrialState

_KNOWN_SWEEPS = 64  # sweeps whose trials are kept between leases

_SWEEP_TRIALS = select(trials).where(trials.c.sweep_id == bindparam("sweep_id_")).order_by(trials.c.number)
# The trials of a sweep numbered after the last one read, and those that were running then: a range
# of the (sweep_id, number) index and lookups by id, so a sweep read again costs what changed in it,
# however many trials other sweeps have added since.
_SWEEP_TRIALS_SINCE = (
    select(trials)
    .where(
        ((trials.c.sweep_id == bindparam("sweep_id_")) & (trials.c.number > bindparam("last_number_")))
        | trials.c.id.in_(bindparam("running_", expanding=True))
    )
    .order_by(trials.c.number)
)


class _SweepTrials:
    """What was read of one sweep: every trial up to the last number, by number."""

    def __init__(self) -> None:
        self.by_number: dict[int, Trial] = {}
        self.running: dict[int, tuple[Any, ...]] = {}  # trial id: its row when last read
        self.states: Counter[TrialState] = Counter()  # of the trials in by_number

    def copy(self) -> _SweepTrials:
        copied = _SweepTrials()
        copied.by_number, copied.running = dict(self.by_number), dict(self.running)
        copied.states = self.states.copy()
        return copied

    def put(self, trial: Trial) -> None:
        if (before := self.by_number.get(trial.number)) is not None:
            self.states[before.state] -= 1
        self.by_number[trial.number] = trial
        self.states[trial.state] += 1


class KnownTrials:
    """For the most recently leased sweeps, the trials read before."""

    def __init__(self) -> None:
        self._sweeps: OrderedDict[str, _SweepTrials] = OrderedDict()  # never changed once kept
        self._lock = threading.Lock()

    def read(
        self,
        conn: Connection,
        sweep_id: str,
        keep_later: list[Callable[[], None]],
        drafts: dict[str, _SweepTrials] | None,
    ) -> list[Trial]:
        """Every trial of a sweep (no history), in number order, read under the sweep's lock or in
        one snapshot of a read transaction.

        Within a sweep, trial numbers grow in the order the inserts commit (new_trial holds the
        sweep's lock from before its read until its insert commits), so any snapshot holds a prefix
        of them and ``number > last`` finds every trial added since. Only committed rows are kept:
        a write transaction also reads what it wrote itself, and on SQLite what the calls before
        it in a shared transaction wrote (:mod:`sweeper.store.group_commit`), so the read adds
        to ``keep_later`` the step that keeps it, for the caller to run once what it read is
        committed.
        A read changes a copy of what was kept: two reads of one sweep at once each keep their
        own, and whichever is kept last is a consistent committed state the next read catches up
        from.

        ``drafts``: what the reads of one transaction that a thread holds (``Store.batch``) have
        read so far, by sweep, not committed yet. A read there starts from its sweep's draft, so
        the reads of a batch each catch up only on what changed since the one before, and leaves
        its own there."""
        with self._lock:
            kept = self._sweeps.get(sweep_id)
        draft = drafts.get(sweep_id) if drafts is not None else None
        known = draft or kept or _SweepTrials()
        # What is kept is shared: copied at its first change, it never changes. A draft is a copy
        # this batch made, never the kept one, so its reads change it in place.
        shared = known is kept
        last = next(reversed(known.by_number), 0)  # by_number is kept in number order
        if known.by_number:
            params = {"sweep_id_": sweep_id, "last_number_": last, "running_": sorted(known.running)}
            query = _SWEEP_TRIALS_SINCE
        else:
            params, query = {"sweep_id_": sweep_id}, _SWEEP_TRIALS
        in_order = True
        for row in conn.execute(query, params):
            if known.running.get(row.id) == tuple(row):
                continue  # read before and unchanged: the trial already known stands
            if shared:
                known, shared = known.copy(), False
            trial = rows.trial_from_row(row)
            if trial.number not in known.by_number:
                in_order = in_order and trial.number > last
                last = max(last, trial.number)
            known.put(trial)
            if trial.state.is_terminal:
                known.running.pop(trial.id, None)
            else:
                known.running[trial.id] = tuple(row)
        if not in_order:
            known.by_number = dict(sorted(known.by_number.items()))
        found = CountedTrials(known.by_number.values(), +known.states)  # + drops the zero counts
        if not found:  # nothing to keep, and an unknown sweep's id must not push known ones out
            return found
        # A draft is kept by the step of the read that made it (if that call failed, the next batch
        # catches up from what was kept before: slower, not wrong).
        if known is not draft:
            if drafts is not None and not shared:
                drafts[sweep_id] = known
            keep_later.append(lambda: self._keep(sweep_id, known))
        return found

    def _keep(self, sweep_id: str, known: _SweepTrials) -> None:
        with self._lock:
            self._sweeps[sweep_id] = known
            self._sweeps.move_to_end(sweep_id)
            while len(self._sweeps) > _KNOWN_SWEEPS:
                self._sweeps.popitem(last=False)
