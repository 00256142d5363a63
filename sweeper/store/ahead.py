"""What the first calls on trials of a batch read, read for all of them at once (PostgreSQL).

Under its trial's lock, a metric report reads the latest stored point of each of its metrics
(:func:`sweeper.store.summary.latest_points`), and a trial's end its sweep's running trials
(:data:`sweeper.store.statements.RUNNING_IN_SWEEP_OF_TRIAL`): two statements per call, each of
them costing the coordinator more in the driver than the database spends on it. Here three
statements do it for a whole block of calls (:meth:`SqlStore.trial_calls`): every trial's lock,
taken in the order of trial ids; the latest points of every report's metrics; the running trials
of every ending trial's sweep. They go in one round trip and run in turn, the reads after all
the locks, so each read sees what committed while any lock waited.

What each call would have read on its own is kept under the key of that read
(:func:`read_key`), so a call whose read is not there (a trial's later call, or one whose points
differ from its hint) reads for itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, text

from sweeper.store import statements, summary
from sweeper.store.base import TrialCall
from sweeper.store.prepared import Prepared, read_together

# For each (trial_ids_[i], names_[i], seqs_[i]), in order: the step, seq and value of the metric's
# latest stored point (NULL where none is), and the seq again where the point (name, seq) is stored.
_LATEST_POINTS = Prepared(
    text(
        "SELECT latest.step, latest.seq, latest.value, stored.seq AS stored "
        "FROM unnest(CAST(:trial_ids_ AS INTEGER[]), CAST(:names_ AS TEXT[]), CAST(:seqs_ AS BIGINT[])) "
        "WITH ORDINALITY AS v(trial_id, name, seq, i) "
        "LEFT JOIN LATERAL (SELECT m.step, m.seq, m.value FROM metrics m "
        "WHERE m.trial_id = v.trial_id AND m.name = v.name "
        "ORDER BY m.step DESC, m.seq DESC LIMIT 1) latest ON true "
        "LEFT JOIN LATERAL (SELECT m.seq FROM metrics m "
        "WHERE m.trial_id = v.trial_id AND m.name = v.name AND m.seq = v.seq) stored ON true "
        "ORDER BY v.i"
    )
)


def read_key(statement: Prepared, params: Mapping[str, Any]) -> tuple[Any, ...]:
    """What names one read of one call: its statement and parameters."""
    return (statement, *sorted(params.items()))


def read_ahead(
    conn: Connection, calls: Sequence[TrialCall]
) -> dict[tuple[Any, ...], tuple[list[Any], list[Any]]]:
    """For the first call on each trial among ``calls`` (heartbeats, which read nothing with
    their lock, aside): the rows of its trial's lock and of its read, under the key of its read."""
    first_of_trial = {c.trial_id: c for c in reversed(calls)}  # a later call reads for itself
    reports = [c for c in first_of_trial.values() if c.points]
    ends = [c.trial_id for c in first_of_trial.values() if c.points is None]
    if not reports and not ends:
        return {}
    reads: list[tuple[Prepared, Mapping[str, Any]]] = [
        (statements.TRIALS_LOCKED, {"ids_": sorted([c.trial_id for c in reports] + ends)})
    ]
    # Each report's newest point of each metric, and the read it would make on its own.
    read_of = [(c.trial_id, *summary.points_read(c.trial_id, c.points)[1:]) for c in reports]
    if reports:
        wanted = [
            (trial_id, name, point["seq"])
            for trial_id, newest, _, _ in read_of
            for name, point in newest.items()
        ]
        trial_ids, names, seqs = (list(column) for column in zip(*wanted, strict=True))
        reads.append((_LATEST_POINTS, {"trial_ids_": trial_ids, "names_": names, "seqs_": seqs}))
    if ends:
        reads.append((statements.RUNNING_IN_SWEEPS_OF_TRIALS, {"ids_": ends}))
    found = read_together(conn, *reads)
    locked = {row.id: [row] for row in found[0]}
    ahead: dict[tuple[Any, ...], tuple[list[Any], list[Any]]] = {}
    points = iter(found[1] if reports else ())
    for trial_id, newest, statement, params in read_of:  # latest_points' one row: 4 columns a metric
        row = tuple(value for _ in newest for value in next(points))
        ahead[read_key(statement, params)] = (locked.get(trial_id, []), [row])
    running = dict(found[-1]) if ends else {}
    for trial_id in ends:
        rows = locked.get(trial_id, [])
        count = running.get(rows[0].sweep_id, 0) if rows else 0
        ahead[read_key(statements.RUNNING_IN_SWEEP_OF_TRIAL, {"trial_id_": trial_id})] = (rows, [(count,)])
    return ahead
