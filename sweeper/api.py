"""The Python way to run a sweep, as W&B users know it::

    sweep_id = sweeper.sweep({"method": "grid", "parameters": {...}})
    sweeper.agent(sweep_id, function=train, count=10)
    best = sweeper.best_trial(sweep_id)  # its .config and .summary

Both work on the embedded store (``./.sweeper/sweeper.db`` unless ``db`` or SWEEPER_DB says
otherwise), or with a ``sweeper server`` given as ``coordinator`` (its URL, or env
SWEEPER_COORDINATOR) and ``token`` (or env SWEEPER_TOKEN), as ``sweeper sweep`` and ``sweeper
agent`` do.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweeper.trials import Trial

log = logging.getLogger("sweeper")


def _say_failures(event: object) -> None:
    """A trial that failed, said as it ends (as ``wandb.agent`` says a function that raised): the
    agent goes on, and its return value is read by few."""
    from sweeper.agents.events import TrialEnded
    from sweeper.agents.stderr import telling_line
    from sweeper.trials import TrialState

    if isinstance(event, TrialEnded) and event.outcome.state is TrialState.FAILED:
        said = telling_line(event.outcome.stderr_tail) or f"exit code {event.outcome.exit_code}"
        log.warning("sweeper: trial %d failed: %s", event.assignment.trial_number, said)


def sweep(
    sweep: Mapping[str, Any] | str | os.PathLike[str] | Callable[[], Mapping[str, Any]],
    entity: str | None = None,
    project: str | None = None,
    prior_runs: list[str] | None = None,
    *,
    db: str | None = None,
    coordinator: str | None = None,
    token: str | None = None,
) -> str:
    """Create a sweep from a config dict (or a function that returns one) or a sweep file; return its id.

    Takes ``wandb.sweep``'s arguments: ``entity`` and ``project`` become the sweep's own keys
    (its W&B runs go there); ``prior_runs`` (W&B runs to count as the sweep's) cannot be taken.
    Raises :class:`sweeper.spec.SpecError` listing every problem when the config is invalid.
    """
    from sweeper.integrations.settings import with_experiment_named
    from sweeper.spec import load_sweep_file, parse_new_sweep, parse_sweep
    from sweeper.spec.advice import spec_advice

    if prior_runs:
        raise ValueError(
            "prior_runs: sweeper cannot count W&B runs made outside it as a sweep's trials; "
            "leave prior_runs out"
        )
    config = sweep() if callable(sweep) else sweep
    if isinstance(config, Mapping):
        spec = parse_new_sweep(with_experiment_named(dict(config)))
    else:
        spec = load_sweep_file(Path(config), with_experiment_named)
    given = {k: v for k, v in (("project", project), ("entity", entity)) if v}
    if given:  # the call's own, as wandb.sweep's arguments win over the file
        spec = parse_sweep({**spec.raw, **given})
    for line in spec_advice(spec):  # valid, but likely not what was meant
        warnings.warn(line, UserWarning, stacklevel=2)
    from sweeper.connect import connect

    with connect(coordinator, token=token, db=db) as service:
        return service.create_sweep(spec).id


def agent(
    sweep_id: str,
    function: Callable[[], object] | None = None,
    entity: str | None = None,
    project: str | None = None,
    count: int | None = None,
    forward_signals: bool = False,
    term_timeout: float | None = None,
    max_consecutive_failed_runs: int | None = None,
    *,
    db: str | None = None,
    coordinator: str | None = None,
    token: str | None = None,
    grace_period: float = 10.0,
    max_failures: int = 3,
) -> str:
    """Run trials of ``sweep_id`` here until the sweep is done or ``count`` trials have run.

    With ``function``, each trial calls it in this process (it takes no arguments and calls
    ``sweeper.init()``, or ``wandb.init()``, for its config); without, each trial runs the
    sweep's command. It stops once ``max_failures`` trials in a row have failed (0: never).
    Returns the one-line reason the agent stopped. The trials come from the ``sweeper server``
    at ``coordinator`` (or env SWEEPER_COORDINATOR), with ``token`` (or env SWEEPER_TOKEN);
    without one, from the store ``db``.

    Takes ``wandb.agent``'s arguments: ``entity`` and ``project`` are accepted (the sweep's id
    names the sweep), ``term_timeout`` is ``grace_period`` (seconds between SIGTERM and SIGKILL
    of a trial's processes) and ``max_consecutive_failed_runs`` is ``max_failures``;
    ``forward_signals`` is what this agent always does (Ctrl-C and SIGTERM stop its trials).
    """
    if entity is not None and not isinstance(entity, str):  # agent(ID, train, 5) meant count=5
        raise TypeError(
            f"entity: expected a str, got {entity!r} (as in wandb.agent, the third argument is "
            "entity; give count=N)"
        )
    del entity, project, forward_signals  # the sweep was made with them (see sweep())
    if term_timeout is not None:
        grace_period = float(term_timeout)
    if max_consecutive_failed_runs is not None:
        max_failures = max_consecutive_failed_runs
    from sweeper.connect import connect
    from sweeper.local import LocalAgents
    from sweeper.protocol import interrupted_reason, sweep_id_from

    sweep_id = sweep_id_from(sweep_id)  # also as wandb.agent takes it: "entity/project/ID"
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise TypeError(f"count: expected a whole number of trials, 0 or more, or None; got {count!r}")
    if function is not None and not callable(function):
        raise TypeError(f"function: expected a function that takes no arguments, got {function!r}")
    # A sweep to run is in a store already made; the store is closed once the agent is done.
    with connect(coordinator, token=token, db=db, create=False) as service:
        _check_trackers(service, sweep_id)
        agents = LocalAgents(
            service,
            sweep_id,
            agents=1,
            count=count,
            function=function,
            grace_period=grace_period,
            max_failures=max_failures,
            on_event=_say_failures,
        )
        agents.start()
        try:
            reasons = agents.wait()
        except KeyboardInterrupt:
            agents.stop(interrupted_reason("Ctrl-C"))
            if function is not None:  # it may compute for a while before it logs again
                log.warning(
                    "sweeper: interrupted; the running trial ends at its next log call (Ctrl-C again "
                    "leaves it: it counts as lost once its lease runs out)"
                )
            agents.wait()
            raise
    return reasons[0] if reasons else "done"


def best_trial(
    sweep_id: str, *, db: str | None = None, coordinator: str | None = None, token: str | None = None
) -> Trial | None:
    """The sweep's best trial so far by its ``metric`` (as W&B's ``sweep.best_run()`` or
    Optuna's ``study.best_trial``), among those that finished or were stopped early; None while
    none has a finite value, or when the sweep names no metric. Its ``config`` holds the values
    it ran with, ``summary`` each metric's last value. The sweep is found as :func:`agent` finds it.
    """
    from sweeper.connect import connect
    from sweeper.protocol import sweep_id_from

    with connect(coordinator, token=token, db=db, create=False) as service:
        return service.best_trial(sweep_id_from(sweep_id))


def get_trials(
    sweep_id: str, *, db: str | None = None, coordinator: str | None = None, token: str | None = None
) -> list[Trial]:
    """Every trial of the sweep, in number order (as Optuna's ``study.get_trials()``): its ``state``,
    ``config``, ``summary`` (each metric's last value) and, for one that ended early, ``stop_reason``."""
    from sweeper.connect import connect
    from sweeper.protocol import sweep_id_from

    with connect(coordinator, token=token, db=db, create=False) as service:
        return service.trials(sweep_id_from(sweep_id))


def _check_trackers(coordinator: Any, sweep_id: str) -> None:
    """Raise :class:`~sweeper.integrations.base.TrackerRefusedError` before any trial runs when
    this process cannot log where the sweep logs (see ``sweeper agent``)."""
    from sweeper.integrations.base import TrackerRefusedError
    from sweeper.integrations.session import agent_tracker_problem
    from sweeper.trials import SweepState

    if coordinator.get_sweep(sweep_id).state not in (SweepState.RUNNING, SweepState.PAUSED):
        return  # the agent says the sweep is over
    problem = agent_tracker_problem(coordinator.spec_of(sweep_id), sweep_id)
    if problem:
        raise TrackerRefusedError(problem)
