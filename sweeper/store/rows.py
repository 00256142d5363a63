"""Rows in, frozen records out: conversions between table rows and sweeper's records."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row

from sweeper.protocol import SweepNotFoundError
from sweeper.store.schema import metrics
from sweeper.trials import MetricPoint, Sweep, SweepState, Trial, TrialState


def dumps(value: Any) -> str:
    # allow_nan keeps NaN and infinity (written as NaN/Infinity, which json.loads reads back).
    return json.dumps(value, allow_nan=True)


def config_key(config: Mapping[str, Any]) -> str:
    """The canonical text of a configuration, equal for equal configurations."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def found_sweep(row: Row[Any] | None, sweep_id: str) -> Sweep:
    """The sweep of ``row``; :class:`SweepNotFoundError` when no row was found."""
    if row is None:
        raise SweepNotFoundError(f"no sweep with id {sweep_id!r}")
    return sweep_from_row(row)


def sweep_from_row(row: Row[Any]) -> Sweep:
    return Sweep(
        id=row.id,
        name=row.name,
        method=row.method,
        state=SweepState(row.state),
        spec=json.loads(row.spec),
        seed=row.seed,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def trial_from_row(row: Row[Any], history: Iterable[MetricPoint] | None = None) -> Trial:
    return Trial(
        id=row.id,
        sweep_id=row.sweep_id,
        number=row.number,
        config=json.loads(row.config),
        state=TrialState(row.state),
        created_at=row.created_at,
        ended_at=row.ended_at,
        retry_of=row.retry_of,
        member=row.member,
        restore_from=row.restore_from,
        agent=row.agent,
        host=row.host,
        lease_id=row.lease_id,
        lease_expires_at=row.lease_expires_at,
        exit_code=row.exit_code,
        stderr_tail=row.stderr_tail,
        stop_reason=row.stop_reason,
        stop_requested=row.stop_requested,
        summary=json.loads(row.summary),
        history=None if history is None else tuple(history),
    )


def metric_value(stored: float | None) -> float:
    # SQLite stores NaN as NULL; the column is otherwise never NULL.
    return math.nan if stored is None else stored


#: What a point is read from, after the column that groups the points (trial id or number).
POINT_COLUMNS = (metrics.c.name, metrics.c.value, metrics.c.step, metrics.c.seq, metrics.c.time)


def points_by(result: Iterable[Row[Any]]) -> dict[Any, list[MetricPoint]]:
    """Rows of (key, *POINT_COLUMNS) as lists of points by key, in the rows' order. Unpacked as
    tuples: reading each column by name costs more than the rest of the read (millions of points)."""
    grouped: dict[Any, list[MetricPoint]] = defaultdict(list)
    nan = math.nan  # as metric_value: SQLite stores NaN as NULL; the column is otherwise never NULL
    for key, name, value, step, seq, at in result:
        grouped[key].append(MetricPoint(name, nan if value is None else value, step, seq, at))
    return grouped


def point_to_row(trial_id: int, point: MetricPoint) -> dict[str, Any]:
    return {
        "trial_id": trial_id,
        "seq": int(point.seq),
        "name": str(point.name),
        "step": int(point.step),
        "value": float(point.value),
        "time": float(point.time),
    }


@dataclass(frozen=True)
class NewTrialRow:
    """The row new_trial inserted, with the attributes :func:`trial_from_row` read: what was just
    written, so it need not be read back."""

    id: int
    sweep_id: str
    number: int
    state: str
    config: str
    config_key: str
    retry_of: int | None
    member: int | None
    restore_from: str | None
    agent: str
    host: str
    lease_id: str
    lease_expires_at: float
    created_at: float
    summary: str
    ended_at: None = None  # the columns new_trial leaves empty
    exit_code: None = None
    stderr_tail: None = None
    stop_reason: None = None
    stop_requested: None = None

    @classmethod
    def of(cls, trial_id: int, values: Mapping[str, Any]) -> NewTrialRow:
        return cls(id=trial_id, **values)
