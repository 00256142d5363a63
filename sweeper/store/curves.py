"""Reading the curves of one metric: every trial's (:meth:`Store.metric_curves`), or those of some
trials of a sweep with the trials themselves (:meth:`Store.trial_curves`).

A stopping rule keeps the curves of ended trials, which never change, and asks on each report
only for the trials added since its last read and those running then: a range of the
(sweep_id, number) index and a few numbers, and their points through ``ix_metrics_curve``.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import Connection, bindparam, select

from sweeper.store import rows
from sweeper.store.schema import metrics, trials
from sweeper.trials import MetricPoint, Trial

_CHOSEN = (trials.c.sweep_id == bindparam("sweep_id_")) & (
    (trials.c.number > bindparam("after_")) | trials.c.number.in_(bindparam("numbers_", expanding=True))
)
_TRIALS = select(trials).where(_CHOSEN).order_by(trials.c.number)
_POINTS = (
    select(trials.c.number, *rows.POINT_COLUMNS)
    .join(metrics, metrics.c.trial_id == trials.c.id)
    .where(_CHOSEN, metrics.c.name == bindparam("name_"))
    .order_by(trials.c.number, metrics.c.step, metrics.c.seq)
)


def read_trial_curves(
    conn: Connection, sweep_id: str, name: str, after: int, numbers: Collection[int]
) -> list[Trial]:
    """The trials numbered above ``after`` or among ``numbers``, each with its points of ``name``.

    The trials are read first, their points after: where each statement sees its own snapshot
    (PostgreSQL's READ COMMITTED), a trial read as ended still comes with every point it has,
    as a trial's points are committed before it ends. A trial added between the two reads is
    left out (the next read finds it)."""
    params = {"sweep_id_": sweep_id, "after_": after, "numbers_": sorted(numbers), "name_": name}
    found = [rows.trial_from_row(row) for row in conn.execute(_TRIALS, params)]
    curves = rows.points_by(conn.execute(_POINTS, params))
    return [trial.with_history(curves.get(trial.number, ())) for trial in found]


def sweep_curves(conn: Connection, sweep_id: str, name: str) -> dict[int, list[MetricPoint]]:
    """The points of metric ``name`` of every trial of a sweep, by trial number, in step order."""
    # One indexed query: ix_metrics_curve serves (trial_id, name) and the (step, seq) order.
    query = (
        select(trials.c.number, *rows.POINT_COLUMNS)
        .join(metrics, metrics.c.trial_id == trials.c.id)
        .where(trials.c.sweep_id == sweep_id, metrics.c.name == name)
        .order_by(trials.c.number, metrics.c.step, metrics.c.seq)
    )
    return dict(rows.points_by(conn.execute(query)))
