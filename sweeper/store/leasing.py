"""Leasing a sweep's next trial in one write: the sweep's lock, what changed in its trials since
they were last read, the strategy's decision, and the new trial inserted under its lease.

On PostgreSQL a batch (:meth:`SqlStore.batch`) holds each lock it takes until it ends, so a later
lease of a sweep in the batch uses what an earlier one read, as long as the batch wrote nothing
else meanwhile, and the first lease of a sweep takes the trial ids of all the batch's leases of it
in its own round trip.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection

from sweeper.store import rows, statements
from sweeper.store.base import Lease, StoreError, TrialDraft
from sweeper.store.curves import sweep_curves
from sweeper.store.known import KnownTrials
from sweeper.store.prepared import read_together
from sweeper.trials import CountedTrials, Sweep, Trial, TrialState, count_states


@dataclasses.dataclass
class SweepRead:
    """What a batch's lease of a sweep read: its sweep (locked) and the trial ids taken ahead."""

    sweep: Sweep
    writes: int  # the batch's writes when it was read
    ids: list[int]  # for the batch's later leases of the sweep


@dataclasses.dataclass
class BatchLeases:
    """The leases of a PostgreSQL batch."""

    wanted: Counter[str] = dataclasses.field(default_factory=Counter)  # leases still to run, by sweep
    reads: dict[str, SweepRead] = dataclasses.field(default_factory=dict)  # the last read of each sweep
    writes: int = 0  # writes so far, besides leases


class TrialLeasing:
    """Leases trials for one store. ``drafts`` gives what the reads of the running batch have read
    so far (see :meth:`KnownTrials.read`), looked up as each lease runs."""

    def __init__(
        self, known: KnownTrials, drafts: Callable[[], dict[str, Any] | None], *, postgres: bool
    ) -> None:
        self._known = known
        self._drafts = drafts
        self._postgres = postgres
        self._handed_nothing: set[str] = set()  # sweeps whose last lease here handed no trial out

    def lease_one(
        self,
        conn: Connection,
        sweep_id: str,
        decide: Callable[[Sweep, Sequence[Trial]], TrialDraft | None],
        *,
        lease: Lease,
        now: float,
        history_of: str | None,
        batch: BatchLeases | None,
        keep: list[Callable[[], None]],
    ) -> Trial | None:
        """The trial ``decide`` drafts, inserted under ``lease``; None when it drafts none or the
        sweep hands out no trials. ``keep`` gets what to remember once the write is committed."""
        before = batch.reads.get(sweep_id) if batch is not None else None
        so_far: Sequence[Trial] | None = None
        if before is not None and before.writes == batch.writes and history_of is None:
            # This batch holds the sweep's lock since its last lease of it read the sweep, and
            # wrote nothing else since: what that read, and the trials added since, stand.
            sweep, ids = before.sweep, before.ids
            handing_out = sweep.state.hands_out_trials  # else answered below, without a read
            so_far = self._known.drafted(sweep_id, self._drafts()) if handing_out else []
        if so_far is None:  # ids taken ahead and not used yet still serve
            sweep, so_far, ids = self._reads(conn, sweep_id, keep, batch, before.ids if before else [])
            if batch is not None:
                batch.reads[sweep_id] = SweepRead(sweep, batch.writes, ids)
        if batch is not None:
            batch.wanted[sweep_id] -= 1
        if not sweep.state.hands_out_trials:
            self._handed_nothing.add(sweep_id)
            return None
        if history_of is not None:
            found = sweep_curves(conn, sweep_id, history_of)
            with_history = (t.with_history(found.get(t.number, ())) for t in so_far)
            so_far = CountedTrials(with_history, count_states(so_far))
        draft = decide(sweep, so_far)
        if draft is None:
            self._handed_nothing.add(sweep_id)
            return None
        self._handed_nothing.discard(sweep_id)
        if draft.retry_of is not None and all(t.number != draft.retry_of for t in so_far):
            raise StoreError(f"sweep {sweep_id} has no trial #{draft.retry_of} to retry")
        trial = self._insert(conn, sweep_id, draft, so_far, lease, now, ids)
        if batch is not None:  # for the batch's next lease of the sweep, should it read nothing
            self._known.add_drafted(sweep_id, self._drafts(), trial, keep)
        return trial

    @staticmethod
    def _insert(
        conn: Connection,
        sweep_id: str,
        draft: TrialDraft,
        so_far: Sequence[Trial],
        lease: Lease,
        now: float,
        ids: list[int],
    ) -> Trial:
        config = dict(draft.config)
        values = {
            "sweep_id": sweep_id,
            "number": so_far[-1].number + 1 if so_far else 1,  # so_far is in number order
            "state": TrialState.RUNNING.value,
            "config": rows.dumps(config),
            "config_key": rows.config_key(config),
            "retry_of": draft.retry_of,
            "member": draft.member,
            "restore_from": draft.restore_from,
            "agent": lease.agent,
            "host": lease.host,
            "lease_id": lease.lease_id,
            "lease_expires_at": lease.expires_at,
            "created_at": now,
            "summary": "{}",
        }
        if ids:
            trial_id = ids.pop(0)
            statements.INSERT_TRIAL_WITH_ID.send(conn, {"id": trial_id, **values})
        else:
            trial_id = statements.INSERT_TRIAL.scalar(conn, values)
        # What was just written, as a row: no need to read it back.
        return rows.trial_from_row(rows.NewTrialRow.of(trial_id, values))

    def _reads(
        self,
        conn: Connection,
        sweep_id: str,
        keep: list[Callable[[], None]],
        batch: BatchLeases | None,
        ids: list[int],
    ) -> tuple[Sweep, CountedTrials, list[int]]:
        """A lease's reads: the sweep's lock, then what changed in it since it was last read (on
        PostgreSQL, one round trip; the read sees what committed while the lock waited), and with
        them the ids of the trials the lease and the batch's other leases of the sweep will
        insert (besides ``ids``, taken before), unless the sweep's last lease handed nothing out:
        agents that wait on a sweep would use up ids (a sequence hands each out once, rollback or
        not)."""
        catch_up = self._known.plan(sweep_id, self._drafts())
        reads = [(statements.SWEEP_LOCKED, {"sweep_id_": sweep_id}), (catch_up.statement, catch_up.params)]
        wanted = (max(batch.wanted[sweep_id], 1) if batch is not None else 1) - len(ids)
        if self._postgres and sweep_id not in self._handed_nothing and wanted > 0:
            reads.append((statements.NEXT_TRIAL_IDS, {"n_": wanted}))
        locked, found, *next_ids = read_together(conn, *reads)
        sweep = rows.found_sweep(locked[0] if locked else None, sweep_id)
        # None: a sequence the column does not own
        ids = (ids + [row[0] for row in next_ids[0] if row[0] is not None]) if next_ids else ids
        if not sweep.state.hands_out_trials:
            return sweep, CountedTrials((), Counter()), ids
        # In a batch, what this read found is the draft the batch's later leases of the sweep use.
        return sweep, catch_up.apply(found, keep, as_draft=batch is not None), ids
