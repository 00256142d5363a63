"""The trials of each sweep read before, so a lease (or a listing of a sweep's trials) reads only
what changed.

A lease reads every trial of its sweep under the sweep's lock. Ended trials never change again,
so only the trials added since the last read, and those that were running then, are read again;
and a running trial's row is converted again only where it changed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from sqlalchemy import Connection, bindparam, select

from sweeper.store import rows
from sweeper.store.schema import trials
from sweeper.trials import Trial

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


class KnownTrials:
    """For the most recently leased sweeps, the trials read before."""

    def __init__(self) -> None:
        self._sweeps: OrderedDict[str, _SweepTrials] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0  # one more at each forget(): what was read before it is not kept

    def forget(self) -> None:
        """Drop every sweep read so far, and what reads under way would keep: the next read of each
        sweep reads it whole."""
        with self._lock:
            self._sweeps.clear()
            self._generation += 1

    def read(self, conn: Connection, sweep_id: str) -> list[Trial]:
        """Every trial of a sweep (no history), in number order, read under the sweep's lock or in
        one snapshot of a read transaction.

        Within a sweep, trial numbers grow in the order the inserts commit (new_trial holds the
        sweep's lock from before its read until its insert commits), so any snapshot holds a prefix
        of them and ``number > last`` finds every trial added since. A write transaction shared by
        several calls (SQLite: :mod:`sweeper.store.group_commit`) reads what its earlier calls
        wrote before that commits; should it fail instead, :meth:`forget` drops it. Two reads of
        one sweep at once each read from their own copy; whichever is kept is a consistent state
        the next read catches up from."""
        with self._lock:
            known = self._sweeps.pop(sweep_id, None) or _SweepTrials()
            generation = self._generation
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
            trial = rows.trial_from_row(row)
            if trial.number not in known.by_number:
                in_order = in_order and trial.number > last
                last = max(last, trial.number)
            known.by_number[trial.number] = trial
            if trial.state.is_terminal:
                known.running.pop(trial.id, None)
            else:
                known.running[trial.id] = tuple(row)
        if not in_order:
            known.by_number = dict(sorted(known.by_number.items()))
        found = list(known.by_number.values())
        if not found:  # nothing to keep, and an unknown sweep's id must not push known ones out
            return found
        with self._lock:
            if generation != self._generation:  # forgotten meanwhile: it may hold rows never written
                return found
            self._sweeps[sweep_id] = known
            while len(self._sweeps) > _KNOWN_SWEEPS:
                self._sweeps.popitem(last=False)
        return found
