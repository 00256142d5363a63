"""Text for people: progress lines, state counts, the leaderboard."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import click

from sweeper.agents.stderr import telling_line
from sweeper.results import best_of, format_config, ranked
from sweeper.spec import SweepSpec
from sweeper.trials import SweepState, Trial, TrialState, count_states


def describe_event(spec: SweepSpec, event: Any) -> str | None:
    from sweeper.agents import TrialAbandoned, TrialEnded, TrialStarted

    metric = spec.metric.name if spec.metric else None
    if isinstance(event, TrialStarted):
        started = event.assignment
        again = f"  (retry of trial {started.retry_of})" if started.retry_of is not None else ""
        return f"trial {started.trial_number} started   {format_config(started.config)}{again}"
    if isinstance(event, TrialEnded):
        number = event.assignment.trial_number
        outcome = event.outcome
        value = event.summary.get(metric) if metric else None
        if isinstance(value, int | float):
            shown = f"  {metric}={value:.6g}"
        else:  # the search learns nothing from this trial: say so while it runs
            shown = f"  (no {metric} logged)" if metric else ""
        if outcome.state is TrialState.FAILED:
            last = why_it_ended(outcome.state, outcome.stderr_tail, outcome.stop_reason)
            return f"trial {number} failed    exit {outcome.exit_code} after {event.seconds:.1f}s: {last}"
        if outcome.state is TrialState.STOPPED:
            return f"trial {number} stopped   after {event.seconds:.1f}s ({outcome.stop_reason}){shown}"
        if outcome.state is TrialState.LOST:  # its agent was interrupted: no result, it may run again
            return f"trial {number} lost      after {event.seconds:.1f}s ({outcome.stop_reason})"
        return f"trial {number} finished  in {event.seconds:.1f}s{shown}"
    if isinstance(event, TrialAbandoned):
        return f"trial {event.assignment.trial_number} abandoned: {event.reason}"
    return None


def state_counts(counts: Mapping[TrialState, int]) -> str:
    return ", ".join(f"{counts[s]} {s.value}" for s in TrialState if counts.get(s)) or "no trials yet"


def leaderboard(spec: SweepSpec, trials: Sequence[Trial], top: int = 5) -> list[str]:
    metric = spec.metric.name if spec.metric else None
    rows = ranked(spec, trials)[:top] if metric else list(trials)[:top]
    if not rows:
        return []
    header = f"{'trial':>5}  {'state':<9} {metric or '':>12}  config"
    lines = [header]
    for t in rows:
        value = t.metric(metric) if metric else None
        shown = f"{value:.6g}" if value is not None else "-"
        lines.append(f"{t.number:>5}  {t.state.value:<9} {shown:>12}  {format_config(t.config, limit=8)}")
    return lines


def print_summary(coordinator: Any, sweep_id: str, top: int = 5, *, say_missing: bool = False) -> None:
    """The sweep's state, counts, best trial and leaderboard; with ``say_missing``, a finished
    sweep's configurations without a result too (the last line of its agents said them already)."""
    sweep = coordinator.get_sweep(sweep_id)
    spec = coordinator.spec_of(sweep_id)
    trials = coordinator.trials(sweep_id)
    counts = state_counts(count_states(trials))
    click.echo(f"sweep {sweep.id} ({sweep.method}) is {sweep.state.value}: {counts}")
    best = best_of(spec, trials)  # from the trials at hand: a server would send them all again
    if spec.metric and best is not None:
        value = best.metric(spec.metric.name)
        click.echo(
            f"best: trial {best.number}  {spec.metric.name}={value:.6g} ({spec.metric.goal.value})  "
            f"{format_config(best.config, limit=20)}"
        )
    elif spec.metric and (hint := metric_never_logged(spec.metric.name, trials)):
        click.echo(f"warning: {hint}", err=True)
    for line in leaderboard(spec, trials, top=top):
        click.echo(line)
    if say_missing and sweep.state is SweepState.FINISHED:
        from sweeper.planning import no_result_said  # here: it pulls in the store, which agents do without

        if said := no_result_said(spec, sweep.id, trials):
            click.echo(f"note: {said}")


def metric_never_logged(metric: str, trials: Sequence[Trial]) -> str | None:
    """What to tell a person whose trials ended without ever logging the sweep's metric: the
    search then learns nothing (W&B's is as blind, and silent). None when any trial logged it."""
    ended = [t for t in trials if t.state.gives_a_result]
    values = [value for t in trials if (value := t.metric(metric)) is not None]
    if not ended or any(math.isfinite(value) for value in values):
        return None
    if values:  # logged, but never a number the search can use
        return (
            f"the last value of the sweep's metric {metric!r} is NaN or infinite in every trial that "
            f"logged it ({len(values)}): the search learns nothing from them; look for a diverging loss "
            "or a division by zero in the script"
        )
    logged = sorted({name for t in ended for name in t.summary if not name.startswith("_")})
    seen = f"they logged {', '.join(logged)}" if logged else "they logged no metric at all"
    disabled = ""
    if not logged and os.environ.get("WANDB_MODE", "").lower() == "disabled":
        # wandb.init() then gives a run whose log() does nothing, which sweeper cannot see either.
        disabled = (
            "; WANDB_MODE=disabled makes wandb.log do nothing: use WANDB_MODE=offline to keep runs local"
        )
    return (
        f"none of the {len(ended)} trial(s) that ended logged the sweep's metric {metric!r} ({seen}); "
        f"fix metric.name in the sweep file, or log it from the script{disabled}"
    )


def why_it_ended(state: TrialState, stderr_tail: str | None, stop_reason: str | None) -> str | None:
    """Why a trial did not finish, in one line: a failed trial's telling line of stderr, a
    stopped or lost trial's reason; None for the rest."""
    if state is TrialState.FAILED:
        return telling_line(stderr_tail) or "(no error message on stderr)"
    if state in (TrialState.STOPPED, TrialState.LOST):
        return stop_reason
    return None


class Progress:
    """Prints one line when a trial starts and one when it ends, from any agent thread.

    Where standard output goes away (``| head``, a ``tee`` that died, a closed terminal), the
    agents go on: that is said once on stderr, and standard output goes to /dev/null from then
    on, so later lines and the interpreter's last flush do not fail."""

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._gone = False

    def on_event(self, event: object) -> None:
        line = describe_event(self.spec, event)
        if not line:
            return
        with self._lock:
            if self._gone:
                return
            try:
                click.echo(f"[{time.monotonic() - self._started:7.1f}s] {line}")
            except OSError as exc:
                self._gone = True
                _discard_stdout()
                with contextlib.suppress(OSError):
                    click.echo(
                        f"progress lines cannot be written to standard output ({type(exc).__name__}); "
                        "the trials go on ('sweeper status' follows them)",
                        err=True,
                    )


@contextlib.contextmanager
def stdout_may_be_gone() -> Iterator[None]:
    """Lines to standard output that may find it gone (``| head``, a ``tee`` that died): they are
    lost, the command goes on, and later lines go to /dev/null."""
    try:
        yield
    except BrokenPipeError:
        _discard_stdout()


def _discard_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
