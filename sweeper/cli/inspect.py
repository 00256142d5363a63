"""``sweeper status`` and ``sweeper trials``: looking at what a sweep has done."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import click

from sweeper.cli.common import (
    connect_or_fail,
    coordinator_errors,
    coordinator_option,
    db_option,
    store_label,
    sweep_id_argument,
    token_option,
)
from sweeper.cli.report import print_summary, state_counts, why_it_ended
from sweeper.protocol import CoordinatorService, SweepNotFoundError
from sweeper.spec import SweepSpec, flatten_config
from sweeper.trials import Trial

# Seconds a server has to answer each call of a listing: a page of trials with their curves, or
# every trial of a large sweep without them, takes it seconds; a server that hangs (stopped with
# Ctrl-Z, say) is given up on with a message, not waited for in silence.
READ_TIMEOUT = 60.0
TRIALS_PER_PAGE = 20  # trials read at once with their curves: what `trials --format json` holds


def _check_sweep(coordinator: Any, sweep_id: str) -> None:
    try:
        coordinator.get_sweep(sweep_id)
    except SweepNotFoundError:
        known = [s.id for s in coordinator.list_sweeps()[:5]]
        hint = f" (recent sweeps: {', '.join(known)})" if known else " (this store has no sweeps)"
        raise click.ClickException(f"no sweep with id {sweep_id!r} in this store{hint}") from None


@click.command()
@sweep_id_argument(required=False)
@click.option(
    "--top", default=5, show_default=True, type=click.IntRange(min=1), help="Rows in the leaderboard."
)
@coordinator_option
@token_option
@db_option
def status(
    sweep_id: str | None, top: int, coordinator_url: str | None, token: str | None, db_url: str | None
) -> None:
    """State counts, the best trial and a leaderboard of SWEEP_ID (all sweeps when omitted)."""
    coordinator = connect_or_fail(coordinator_url, token, db_url, existing=True, timeout=READ_TIMEOUT)
    with coordinator_errors():
        _status(coordinator, sweep_id, top)


def _status(coordinator: Any, sweep_id: str | None, top: int) -> None:
    if sweep_id is None:
        sweeps = coordinator.list_sweeps()
        if not sweeps:
            # Run here, or made on a server for its agents.
            how = "sweeper run FILE" if store_label(coordinator) else "sweeper sweep FILE"
            click.echo(f"no sweeps yet: create one with '{how}'")
        for sweep in sweeps:
            created = datetime.fromtimestamp(sweep.created_at, UTC).strftime("%Y-%m-%d %H:%M")
            counts = coordinator.trial_counts(sweep.id)  # not the trials themselves
            click.echo(
                f"{sweep.id}  {sweep.method:<8} {sweep.state.value:<10} {created}  {state_counts(counts)}"
                f"{'  ' + sweep.name if sweep.name else ''}"
            )
        return
    _check_sweep(coordinator, sweep_id)
    print_summary(coordinator, sweep_id, top=top, say_missing=True)


@click.command()
@sweep_id_argument()
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True
)
@coordinator_option
@token_option
@db_option
def trials(
    sweep_id: str, fmt: str, coordinator_url: str | None, token: str | None, db_url: str | None
) -> None:
    """Every trial of SWEEP_ID: config, state, final metrics (and metric curves in JSON)."""
    coordinator = connect_or_fail(coordinator_url, token, db_url, existing=True, timeout=READ_TIMEOUT)
    with coordinator_errors():
        _check_sweep(coordinator, sweep_id)
        if fmt == "json":  # curves can be millions of points: a page of trials at a time
            _echo_json_list(trial_to_json(t) for t in trials_in_pages(coordinator, sweep_id))
            return
        rows = coordinator.trials(sweep_id)
    if fmt == "csv":
        with coordinator_errors():
            spec = coordinator.spec_of(sweep_id)
        click.echo(trials_to_csv(rows, spec), nl=False)
    else:
        _print_table(rows)


def trials_in_pages(
    coordinator: CoordinatorService, sweep_id: str, size: int = TRIALS_PER_PAGE
) -> Iterator[Trial]:
    """Every trial of the sweep with its history, read ``size`` trials at a time."""
    after = 0
    while True:
        page = coordinator.trials(sweep_id, with_history=True, after=after, limit=size)
        yield from page
        if len(page) != size:  # fewer: the last page; more: a server older than pages sent them all
            return
        after = page[-1].number


def _echo_json_list(items: Iterable[Any]) -> None:
    """``json.dumps(list(items), indent=2)``, written an item at a time."""
    sep = "[\n"
    for item in items:
        text = json.dumps(item, indent=2, default=_json_default)  # no blank lines: strings escape \n
        click.echo(sep + "  " + text.replace("\n", "\n  "), nl=False)
        sep = ",\n"
    click.echo("[]" if sep == "[\n" else "\n]")


def trial_to_json(trial: Trial) -> dict[str, Any]:
    curves: dict[str, list[list[float]]] = {}
    for point in trial.history or ():
        curves.setdefault(point.name, []).append([point.step, _finite_or_str(point.value)])
    return {
        "number": trial.number,
        "state": trial.state.value,
        "config": trial.config,
        "metrics": {k: _finite_or_str(v) for k, v in trial.summary.items()},
        "curves": curves,
        "exit_code": trial.exit_code,
        "stop_reason": trial.stop_reason,
        "reason": _reason(trial),
        "stderr_tail": trial.stderr_tail,
        "retry_of": trial.retry_of,
        "member": trial.member,
        "restore_from": trial.restore_from,
        "agent": trial.agent,
        "host": trial.host,
        "created_at": trial.created_at,
        "ended_at": trial.ended_at,
    }


_FIXED_COLUMNS = (
    "number", "state", "exit_code", "stop_reason", "retry_of", "member", "restore_from", "reason"
)  # fmt: skip


def trials_to_csv(rows: Sequence[Trial], spec: SweepSpec | None = None) -> str:
    """A row per trial; with ``spec``, a parameter whose values are dicts is one column."""
    config_cols = sorted({k for t in rows for k in _flatten(t.config, spec)})
    metric_cols = sorted({k for t in rows for k in t.summary})
    # A header names each column once: a metric named as a parameter (``lr`` logged while ``lr``
    # is swept) or as a fixed column is ``metric:lr``, a parameter named as a fixed column ``config:``.
    taken = {*_FIXED_COLUMNS, *config_cols}
    config_names = [f"config:{c}" if c in _FIXED_COLUMNS else c for c in config_cols]
    metric_names = [f"metric:{m}" if m in taken else m for m in metric_cols]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["number", "state", *config_names, *metric_names, *_FIXED_COLUMNS[2:]])
    for t in rows:
        flat = _flatten(t.config, spec)
        writer.writerow(
            [
                t.number,
                t.state.value,
                *(_cell(flat.get(c, "")) for c in config_cols),
                *(t.summary.get(m, "") for m in metric_cols),
                "" if t.exit_code is None else t.exit_code,
                t.stop_reason or "",
                "" if t.retry_of is None else t.retry_of,
                "" if t.member is None else t.member,  # a PBT member, and the checkpoint it started from
                t.restore_from or "",
                _reason(t) or "",
            ]
        )
    return out.getvalue()


def _print_table(rows: Sequence[Trial]) -> None:
    from sweeper.results import format_config

    if not rows:
        click.echo("no trials yet")
        return
    width = max(len("trial"), *(len(str(t.number)) for t in rows))
    configs = [format_config(t.config, limit=8) for t in rows]
    # Configs as wide as the widest (up to a line's worth), so the metrics line up under their header.
    config_width = min(max(len("config"), *(len(c) for c in configs)), _CONFIG_COLUMN)
    click.echo(f"{'trial':>{width}}  {'state':<9} {'config':<{config_width}}  metrics")
    for t, config in zip(rows, configs, strict=True):
        metrics = " ".join(f"{k}={v:.6g}" for k, v in t.summary.items()) or "-"
        reason = _reason(t)
        why = f"  why: {_shortened(reason)}" if reason else ""
        click.echo(f"{t.number:>{width}}  {t.state.value:<9} {config:<{config_width}}  {metrics}{why}")


_CONFIG_COLUMN = 80  # characters: a wider config pushes its row's metrics along


def _reason(trial: Trial) -> str | None:
    """Why it did not finish, as its progress line said (the rest of stderr: ``stderr_tail``)."""
    return why_it_ended(trial.state, trial.stderr_tail, trial.stop_reason)


def _shortened(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())  # one row a trial
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cell(value: Any) -> Any:
    """A value for a CSV cell: a dict or a list (a dict-valued categorical, a list value) as JSON,
    which every reader of the file can parse back, rather than as Python writes it."""
    return json.dumps(value, default=_json_default) if isinstance(value, dict | list) else value


def _flatten(config: Mapping[str, Any], spec: SweepSpec | None = None) -> dict[str, Any]:
    return {".".join(path): value for path, value in flatten_config(config, spec).items()}


def _finite_or_str(value: float) -> float | str:
    # JSON has no NaN or infinity; keep them readable instead of emitting invalid JSON.
    return value if math.isfinite(value) else str(value)


def _json_default(value: Any) -> Any:
    return str(value)
