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

from sqlalchemy import Connection, bindparam, literal_column, select

from sweeper.store import rows
from sweeper.store.schema import trials
from sweeper.trials import Trial

_KNOWN_SWEEPS = 64  # sweeps whose trials are kept between leases

_SWEEP_TRIALS = select(trials).where(trials.c.sweep_id == bindparam("sweep_id_")).order_by(trials.c.number)
# The trials of a sweep added since a read, and those that were running then. The sweep is matched
# as ``sweep_id || ''`` so that no index serves that term: the database then finds the rows by id
# (a primary key range and lookups), instead of walking every trial of the sweep by its sweep_id index.
_SWEEP_TRIALS_SINCE = (
    select(trials)
    .where(trials.c.sweep_id.concat(literal_column("''")) == bindparam("sweep_id_"))
    .where((trials.c.id > bindparam("max_id_")) | trials.c.id.in_(bindparam("running_", expanding=True)))
    .order_by(trials.c.number)
)


class _SweepTrials:
    """What was read of one sweep: every trial up to ``max_id``, by number."""

    def __init__(self) -> None:
        self.by_number: dict[int, Trial] = {}
        self.max_id = 0
        self.running: dict[int, tuple[Any, ...]] = {}  # trial id: its row when last read


class KnownTrials:
    """For the most recently leased sweeps, the trials read before."""

    def __init__(self) -> None:
        self._sweeps: OrderedDict[str, _SweepTrials] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, conn: Connection, sweep_id: str) -> list[Trial]:
        """Every trial of a sweep (no history), in number order, read under the sweep's lock or in
        one snapshot of a read transaction.

        Within a sweep, trial ids grow in the order the inserts commit (new_trial holds the sweep's
        lock from before its read until its insert commits), so any snapshot holds a prefix of them
        and ``id > max_id`` finds every trial added since. Only committed rows are kept: they are
        read before this transaction writes. Two reads of one sweep at once each read from their
        own copy; whichever is kept is a consistent state the next read catches up from."""
        with self._lock:
            known = self._sweeps.pop(sweep_id, None) or _SweepTrials()
        if known.by_number:
            params = {"sweep_id_": sweep_id, "max_id_": known.max_id, "running_": sorted(known.running)}
            query = _SWEEP_TRIALS_SINCE
        else:
            params, query = {"sweep_id_": sweep_id}, _SWEEP_TRIALS
        last = next(reversed(known.by_number), 0)
        in_order = True
        for row in conn.execute(query, params):
            if known.running.get(row.id) == tuple(row):
                continue  # read before and unchanged: the trial already known stands
            trial = rows.trial_from_row(row)
            if trial.number not in known.by_number:
                in_order = in_order and trial.number > last
                last = max(last, trial.number)
            known.by_number[trial.number] = trial
            known.max_id = max(known.max_id, trial.id)
            if trial.state.is_terminal:
                known.running.pop(trial.id, None)
            else:
                known.running[trial.id] = tuple(row)
        if not in_order:
            known.by_number = dict(sorted(known.by_number.items()))
        found = list(known.by_number.values())
        with self._lock:
            self._sweeps[sweep_id] = known
            while len(self._sweeps) > _KNOWN_SWEEPS:
                self._sweeps.popitem(last=False)
        return found
