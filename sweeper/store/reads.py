"""Reads of trials and sweeps that need nothing but a connection: trials with their histories,
and the sweeps left with nothing running."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Select, func, select

from sweeper.store import rows
from sweeper.store.schema import metrics, sweeps, trials
from sweeper.trials import MetricPoint, SweepState, Trial, TrialState


def trials_of(conn: Connection, query: Select[Any], with_history: bool) -> list[Trial]:
    """Trials matching ``query`` in number order; their history in one more query, not one each."""
    found = conn.execute(query.order_by(trials.c.number)).all()
    if not with_history:
        return [rows.trial_from_row(row) for row in found]
    history = _histories(conn, query.with_only_columns(trials.c.id))
    return [rows.trial_from_row(row, history.get(row.id, ())) for row in found]


def _histories(conn: Connection, trial_ids: Select[Any]) -> dict[int, list[MetricPoint]]:
    """The metric points of the trials whose ids ``trial_ids`` selects, by trial id, in one query."""
    chosen = trial_ids.subquery()
    query = select(metrics.c.trial_id, *rows.POINT_COLUMNS).where(metrics.c.trial_id.in_(select(chosen.c.id)))
    order = (metrics.c.trial_id, metrics.c.step, metrics.c.seq, metrics.c.name)
    return rows.points_by(conn.execute(query.order_by(*order)))


def idle_sweeps(conn: Connection) -> dict[str, tuple[int, float | None]]:
    """Running sweeps with no running trial: their trial count and last end, by id."""
    of_sweep = trials.c.sweep_id == sweeps.c.id
    any_running = select(trials.c.id).where(of_sweep, trials.c.state == TrialState.RUNNING.value).exists()
    count = select(func.count()).where(of_sweep).scalar_subquery()
    last_end = select(func.max(trials.c.ended_at)).where(of_sweep).scalar_subquery()
    query = select(sweeps.c.id, count, last_end).where(
        sweeps.c.state == SweepState.RUNNING.value, ~any_running
    )
    return {sweep_id: (int(n), ended_at) for sweep_id, n, ended_at in conn.execute(query)}
