"""A trial's summary (the value at the highest (step, seq) of each metric) kept up to date as points arrive.

Once the trial is locked, one read finds, for each metric in a batch of points, the latest point
stored so far and whether the batch's newest point is stored already (a point is one (name, seq)
of a trial: sent again, it is not stored again). On PostgreSQL the lock and this read go to the
server together (:func:`read_together`). From these the new summary follows without reading
anything after the points are written, so the points and the summary go to the server with the
next statement (:meth:`Prepared.send`). Only a batch whose newest point of a metric was stored
before under other values needs the latest points read again.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, select

from sweeper.store import rows
from sweeper.store.prepared import Prepared
from sweeper.store.schema import metrics
from sweeper.store.statements import UPDATE_TRIAL
from sweeper.trials import MetricPoint, Trial

# The latest point of one metric of a trial.
LATEST_VALUE = Prepared(
    select(metrics.c.value)
    .where(metrics.c.trial_id == bindparam("trial_id_"), metrics.c.name == bindparam("name_"))
    .order_by(metrics.c.step.desc(), metrics.c.seq.desc())
    .limit(1)
)


def newest_points(values: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The point (as a metrics row) with the highest (step, seq) of each metric in a batch, by name
    in name order. Of two points with one (name, seq), the first is the one stored."""
    first: dict[tuple[str, int], Mapping[str, Any]] = {}
    for value in values:
        first.setdefault((value["name"], value["seq"]), value)
    newest: dict[str, Mapping[str, Any]] = {}
    for value in first.values():
        best = newest.get(value["name"])
        if best is None or (value["step"], value["seq"]) > (best["step"], best["seq"]):
            newest[value["name"]] = value
    return {name: newest[name] for name in sorted(newest)}


@functools.lru_cache(maxsize=16)
def latest_points(names: int) -> Prepared:
    """One row: for each of ``names`` metrics (``name_i``) of the trial ``trial_id_``, the step,
    seq and value of its latest stored point (``step_i``, ``seq_i``, ``value_i``; NULL where none
    is stored), and the seq ``seq_i`` again where a point (``name_i``, ``seq_i``) is stored
    (``stored_i``): four columns per metric, in this order (:mod:`sweeper.store.ahead` reads the
    same for many trials at once). Built once per number of metrics: building costs more than
    running."""
    columns: list[Any] = []
    trial_id = bindparam("trial_id_")
    for i in range(names):
        same_metric = (metrics.c.trial_id == trial_id) & (metrics.c.name == bindparam(f"name_{i}"))
        latest = select().where(same_metric).order_by(metrics.c.step.desc(), metrics.c.seq.desc()).limit(1)
        for column in (metrics.c.step, metrics.c.seq, metrics.c.value):
            columns.append(latest.add_columns(column).scalar_subquery().label(f"{column.name}_{i}"))
        stored = select(metrics.c.seq).where(same_metric, metrics.c.seq == bindparam(f"seq_{i}"))
        columns.append(stored.scalar_subquery().label(f"stored_{i}"))
    return Prepared(select(*columns))


def latest_params(newest: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The parameters of :func:`latest_points` for these points."""
    params: dict[str, Any] = {}
    for i, name in enumerate(newest):
        params[f"name_{i}"], params[f"seq_{i}"] = name, newest[name]["seq"]
    return params


def after_insert(
    current: Mapping[str, float], newest: Mapping[str, Mapping[str, Any]], row: Sequence[Any]
) -> dict[str, float] | None:
    """The summary once the points are stored, from the summary before and the row
    :func:`latest_points` read; None where that cannot tell: a metric's newest point was stored
    before and is newer than the latest stored point (so stored under another step)."""
    found = dict(current)
    for i, (name, point) in enumerate(newest.items()):
        step, seq, value, stored = row[4 * i : 4 * i + 4]
        if step is not None and (point["step"], point["seq"]) <= (step, seq):
            found[name] = rows.metric_value(value)  # stays the latest
        elif stored is None:
            found[name] = point["value"]  # stored now, and the latest
        else:
            return None
    return found


def add_points(
    conn: Connection,
    insert_points: Prepared,
    trial: Trial,
    row: Any,
    values: Sequence[Mapping[str, Any]],
    newest: Mapping[str, Mapping[str, Any]],
    changes: Mapping[str, Any],
) -> dict[str, float]:
    """Store the points ``values`` (metrics rows) of ``trial`` (locked), for which
    :func:`latest_points` read ``row`` (``newest``: ``newest_points(values)``), and write its new
    summary along with ``changes`` to its row; the new summary."""
    insert_points.send(conn, values)
    found = after_insert(trial.summary, newest, row)
    if found is None:  # a point sent again under another step: read what is stored
        found = dict(trial.summary)
        for name in newest:
            latest = LATEST_VALUE.first(conn, {"trial_id_": trial.id, "name_": name})
            found[name] = rows.metric_value(latest.value)
    UPDATE_TRIAL.send(conn, {"trial_id_": trial.id, **changes, "summary": rows.dumps(found)})
    return found


def points_read(
    trial_id: int, points: Sequence[MetricPoint]
) -> tuple[list[dict[str, Any]], dict[str, Mapping[str, Any]], Prepared, dict[str, Any]]:
    """For a metric report: its points as metrics rows, the newest of each metric, and the read
    (statement and parameters) that, with the trial's lock, gives what its new summary needs."""
    values = [rows.point_to_row(trial_id, p) for p in points]
    newest = newest_points(values)
    return values, newest, latest_points(len(newest)), {"trial_id_": trial_id, **latest_params(newest)}
