"""A trial's summary (the value at the highest (step, seq) of each metric) kept up to date as points arrive.

Points usually arrive in order, so the newest point of a batch is usually the newest of its metric
overall. The summary is then written by one UPDATE that holds only if that is so; when it is not
(a batch that arrives late, a point sent again with other values), the update changes nothing and
the caller reads the latest points instead. Either way the summary follows the stored points.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, exists, select, update

from sweeper.store import rows
from sweeper.store.prepared import Prepared
from sweeper.store.schema import metrics, trials
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
    in name order."""
    newest: dict[str, Mapping[str, Any]] = {}
    for value in values:
        best = newest.get(value["name"])
        if best is None or (value["step"], value["seq"]) > (best["step"], best["seq"]):
            newest[value["name"]] = value
    return {name: newest[name] for name in sorted(newest)}


def if_newest_params(newest: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The parameters of :func:`update_if_newest` for these points."""
    params: dict[str, Any] = {}
    for i, name in enumerate(newest):
        point = newest[name]
        params.update({f"name_{i}": name, f"step_{i}": point["step"], f"seq_{i}": point["seq"]})
        params[f"value_{i}"] = point["value"]
    return params


@functools.lru_cache(maxsize=16)
def update_if_newest(names: int) -> Prepared:
    """UPDATE the trial ``trial_id_`` (setting the columns it is run with) only where, for each of
    ``names`` metrics, the point (name_i, step_i, seq_i, value_i) is stored and no point of that
    metric has a higher (step, seq). Built once per number of metrics: building costs more than running."""
    statement = update(trials).where(trials.c.id == bindparam("trial_id_"))
    for i in range(names):
        same_metric = (metrics.c.trial_id == bindparam("trial_id_")) & (
            metrics.c.name == bindparam(f"name_{i}")
        )
        step, seq = bindparam(f"step_{i}"), bindparam(f"seq_{i}")
        stored = exists().where(
            same_metric,
            metrics.c.step == step,
            metrics.c.seq == seq,
            metrics.c.value == bindparam(f"value_{i}"),  # SQLite NaN (NULL) equals nothing: read instead
        )
        # step >= :step first: a range of the (trial_id, name, step, seq) index, not every point.
        later = exists().where(
            same_metric, metrics.c.step >= step, (metrics.c.step > step) | (metrics.c.seq > seq)
        )
        statement = statement.where(stored, ~later)
    return Prepared(statement)


def add_points(
    conn: Connection,
    insert_points: Prepared,
    trial: Trial,
    points: Sequence[MetricPoint],
    changes: Mapping[str, Any],
) -> dict[str, float]:
    """Insert ``points`` of ``trial`` (its row locked) and write its new summary along with
    ``changes`` to its row; the new summary."""
    values = [rows.point_to_row(trial.id, p) for p in points]
    insert_points.run(conn, values)
    newest = newest_points(values)
    assumed = {**trial.summary, **{name: point["value"] for name, point in newest.items()}}
    params = {"trial_id_": trial.id, **changes, "summary": rows.dumps(assumed)}
    if update_if_newest(len(newest)).run(conn, {**params, **if_newest_params(newest)}):
        return assumed
    # Not the newest points stored: batches may arrive out of order, or a point again with other values.
    found = dict(trial.summary)
    for name in newest:
        latest = LATEST_VALUE.first(conn, {"trial_id_": trial.id, "name_": name})
        found[name] = rows.metric_value(latest.value)
    UPDATE_TRIAL.run(conn, {**params, "summary": rows.dumps(found)})
    return found
