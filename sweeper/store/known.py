"""The trials of each sweep read before, so a lease (or a listing of a sweep's trials) reads only
what changed.

A lease reads every trial of its sweep under the sweep's lock. Ended trials never change again,
so only the trials added since the last read, and those that were running then, are read again;
and a running trial's row is converted again only where it changed. The one exception, a lost
trial's stop reason that a late interruption rewrites, makes its writer forget the sweep
(:meth:`KnownTrials.forget`): the next read reads it whole.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Integer, any_, bindparam, select
from sqlalchemy.dialects import postgresql

from sweeper.store import rows
from sweeper.store.prepared import Prepared
from sweeper.store.schema import trials
from sweeper.trials import CountedTrials, Trial, TrialState

_KNOWN_SWEEPS = 64  # sweeps whose trials are kept between leases
# Lists of running trials' ids up to this long are padded to a power of two; longer ones are not,
# so a statement never has more parameters than ids (SQLite allows 32766).
_PADDED_UP_TO = 4096

_SWEEP_TRIALS = Prepared(
    select(trials).where(trials.c.sweep_id == bindparam("sweep_id_")).order_by(trials.c.number)
)


# On PostgreSQL the running trials' ids go as one array: one statement, prepared once, whose
# parameters the driver converts without parsing the statement again (it caches that only for
# statements of up to 50 parameters).
_SWEEP_TRIALS_SINCE_ARRAY = Prepared(
    select(trials)
    .where(
        ((trials.c.sweep_id == bindparam("sweep_id_")) & (trials.c.number > bindparam("last_number_")))
        | (trials.c.id == any_(bindparam("running_", type_=postgresql.ARRAY(Integer))))
    )
    .order_by(trials.c.number)
)


@functools.lru_cache(maxsize=32)
def _sweep_trials_since(slots: int) -> Prepared:
    """The trials of a sweep numbered after the last one read (``last_number_``), and those with the
    ids ``running_0`` ... ``running_{slots-1}`` (running when last read): a range of the (sweep_id,
    number) index and lookups by id, so a sweep read again costs what changed in it, however many
    trials other sweeps have added since. One statement per power of two of running trials (the
    last id repeated to fill it; see _PADDED_UP_TO), so each is compiled once."""
    added = (trials.c.sweep_id == bindparam("sweep_id_")) & (trials.c.number > bindparam("last_number_"))
    if slots:
        added = added | trials.c.id.in_([bindparam(f"running_{i}") for i in range(slots)])
    return Prepared(select(trials).where(added).order_by(trials.c.number))


def _since(dialect: str, sweep_id: str, last: int, running: Sequence[int]) -> tuple[Prepared, dict[str, Any]]:
    params: dict[str, Any] = {"sweep_id_": sweep_id, "last_number_": last}
    if dialect == "postgresql":
        params["running_"] = list(running)
        return _SWEEP_TRIALS_SINCE_ARRAY, params
    slots = len(running)
    if 0 < slots <= _PADDED_UP_TO:
        slots = 1 << (slots - 1).bit_length()
    for i in range(slots):
        params[f"running_{i}"] = running[min(i, len(running) - 1)]
    return _sweep_trials_since(slots), params


class _SweepTrials:
    """What was read of one sweep: every trial up to the last number, by number."""

    def __init__(self, generation: int = 0) -> None:
        self.generation = generation  # KnownTrials' count of forgets of the sweep when first read
        self.by_number: dict[int, Trial] = {}
        self.running: dict[int, tuple[Any, ...]] = {}  # trial id: its row when last read
        self.states: Counter[TrialState] = Counter()  # of the trials in by_number
        # Kept (KnownTrials._keep): other threads may be reading it, so it never changes again;
        # a read or a batch that would change it changes a copy.
        self.shared = False

    def copy(self) -> _SweepTrials:
        copied = _SweepTrials(self.generation)
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

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect  # the database's: its form of the catch-up read
        self._sweeps: OrderedDict[str, _SweepTrials] = OrderedDict()  # never changed once kept
        self._forgets: Counter[str] = Counter()  # by sweep: a read from before one is not kept
        self._lock = threading.Lock()

    def read(
        self,
        conn: Connection,
        sweep_id: str,
        keep_later: list[Callable[[], None]],
        drafts: dict[str, _SweepTrials] | None,
    ) -> list[Trial]:
        """Every trial of a sweep (no history), in number order, read under the sweep's lock or in
        one snapshot of a read transaction: :meth:`plan`'s read, run and applied."""
        read = self.plan(sweep_id, drafts)
        return read.apply(read.statement.all(conn, read.params), keep_later)

    def plan(self, sweep_id: str, drafts: dict[str, _SweepTrials] | None) -> CatchUp:
        """The read that catches up on a sweep's trials (a statement and its parameters), for the
        caller to run (on PostgreSQL, with the sweep's lock in one round trip), and then
        :meth:`CatchUp.apply` to what it read.

        Within a sweep, trial numbers grow in the order the inserts commit (new_trial holds the
        sweep's lock from before its read until its insert commits), so any snapshot holds a prefix
        of them and ``number > last`` finds every trial added since. Only committed rows are kept:
        a write transaction also reads what it wrote itself, and on SQLite what the calls before
        it in a shared transaction wrote (:mod:`sweeper.store.group_commit`), so applying the read
        adds to ``keep_later`` the step that keeps it, for the caller to run once what it read is
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
            generation = self._forgets[sweep_id]
        draft = drafts.get(sweep_id) if drafts is not None else None
        known = draft or kept or _SweepTrials(generation)
        if known.by_number:
            last = next(reversed(known.by_number))  # by_number is kept in number order
            statement, params = _since(self._dialect, sweep_id, last, sorted(known.running))
        else:
            statement, params = _SWEEP_TRIALS, {"sweep_id_": sweep_id}
        return CatchUp(self, sweep_id, known, draft, drafts, statement, params)

    def drafted(self, sweep_id: str, drafts: dict[str, _SweepTrials]) -> CountedTrials | None:
        """Every trial of a sweep as this batch's last read of it found them (a read applied
        ``as_draft``), with the trials the batch added since (:meth:`add_drafted`), without
        reading: for a lease under the sweep's lock that the batch holds, with nothing else
        written since that read. None where the batch has no draft of the sweep."""
        known = drafts.get(sweep_id)
        return None if known is None else CountedTrials(known.by_number.values(), +known.states)

    def add_drafted(
        self,
        sweep_id: str,
        drafts: dict[str, _SweepTrials],
        trial: Trial,
        keep_later: list[Callable[[], None]],
    ) -> None:
        """Put a trial this batch just inserted into its sweep's draft, as a read would have."""
        known = drafts.get(sweep_id)
        if known is None:  # the batch's next lease of the sweep reads it
            return
        if known.shared:  # the read found what was kept unchanged: copied at its first change
            known = drafts[sweep_id] = known.copy()
            keep_later.append(lambda: self._keep(sweep_id, known))
        known.put(trial)
        known.running[trial.id] = ()  # no row read yet: the next read converts it again

    def forget(self, sweep_id: str, drafts: dict[str, _SweepTrials] | None) -> None:
        """Drop what was read of a sweep, an ended trial of which changed: the next read reads the
        sweep whole. A read under way from what was kept before is not kept after it."""
        with self._lock:
            self._forgets[sweep_id] += 1
            self._sweeps.pop(sweep_id, None)
        if drafts is not None:
            drafts.pop(sweep_id, None)

    def _keep(self, sweep_id: str, known: _SweepTrials) -> None:
        known.shared = True
        with self._lock:
            if known.generation != self._forgets[sweep_id]:
                return  # read before the sweep was forgotten
            self._sweeps[sweep_id] = known
            self._sweeps.move_to_end(sweep_id)
            while len(self._sweeps) > _KNOWN_SWEEPS:
                self._sweeps.popitem(last=False)


@dataclass
class CatchUp:
    """One planned read of a sweep's trials (:meth:`KnownTrials.plan`)."""

    known_trials: KnownTrials
    sweep_id: str
    known: _SweepTrials  # what the read starts from
    draft: _SweepTrials | None
    drafts: dict[str, _SweepTrials] | None
    statement: Prepared
    params: dict[str, Any]

    def apply(
        self, found_rows: Sequence[Any], keep_later: list[Callable[[], None]], *, as_draft: bool = False
    ) -> list[Trial]:
        """Every trial of the sweep, in number order, from what was known and the rows the read found.
        ``as_draft``: in a batch, what the read found becomes the sweep's draft even where nothing
        changed, for the batch's later leases of the sweep (:meth:`KnownTrials.drafted`): not what
        is kept, which other threads may replace meanwhile."""
        known, draft, drafts = self.known, self.draft, self.drafts
        as_draft = as_draft and drafts is not None
        # What is kept is shared: copied at its first change, it never changes. A draft this batch
        # made by a copy is its own, so its reads change it in place.
        shared = known.shared
        last = next(reversed(known.by_number), 0)
        in_order = True
        for row in found_rows:
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
        if not found and not as_draft:  # nothing to keep; an unknown sweep must not push known ones out
            return found
        # A draft is kept by the step of the read that made it (if that call failed, the next batch
        # catches up from what was kept before: slower, not wrong).
        if known is not draft:
            if drafts is not None and (as_draft or not shared):  # as a draft, even unchanged
                drafts[self.sweep_id] = known
            keep_later.append(lambda: self.known_trials._keep(self.sweep_id, known))
        return found
