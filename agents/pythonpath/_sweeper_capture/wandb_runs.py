"""W&B runs the script opens itself: what it logs, and what it writes to a run's summary.

``Run._log`` (every ``wandb.log``) is wrapped so its numbers are also recorded, with source
"wandb". Numbers a script writes to a run's summary itself are recorded once, when the run ends:
W&B's sweeps read a run's objective from its summary. So are the aggregates ``define_metric(...,
summary=...)`` asks W&B to keep there (``val_acc.max``). ``wandb.init`` is wrapped to mark the trial's
folder (the agent's W&B adapter then leaves the trial's run to the script).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import sys
import threading
from typing import Any

from . import core

# Set while wandb itself writes a run's summary (a resumed run's, or any ``wandb.log`` makes):
# only the script's own writes are its summary values.
_internal = threading.local()
# Held while a function trial's run is opened with wandb's set-up patched for it (see
# _init_beside_open_run), and by sweeper's W&B tracking opening its runs on its own threads.
init_lock = threading.RLock()


class _Written:
    """The numbers a script wrote to one run's summary itself, and the last step its wandb.log used."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.step = 0
        self.logged_at: dict[str, int] = {}  # the step each metric was last logged at
        self.seq: int | None = None  # the record's, once one is made: sent again, it counts once
        self.sent = False
        self.aggregates = _Aggregates()
        self.detached = False  # a run the script took out of the sweep: not the trial's to record

    def summary(self) -> dict[str, float]:
        return {**self.aggregates.values(), **self.values}  # a value the script wrote itself wins

    def summary_step(self, names: Any) -> int:
        """The last step any of ``names`` was logged at (else the run's): a value that replaces a
        logged one adds no step to that metric's curve, nor an iteration for stopping rules."""
        return max((self.logged_at[n] for n in names if n in self.logged_at), default=self.step)


_MODES = ("min", "max", "mean", "first", "last")


class _Aggregates:
    """``run.define_metric(name, summary="max")`` (or "min,mean", a ``*`` glob name): W&B keeps that
    aggregate of the logged values in the run's summary as ``name.max``, where a sweep's metric can
    name it; kept here too, as W&B computes it (one value per step, the last logged there; NaN
    once a NaN was logged), and sent with the summary when the run ends."""

    def __init__(self) -> None:
        self.modes: dict[str, tuple[str, ...]] = {}
        self.stats: dict[str, list[float]] = {}  # min, max, sum, count, first, last
        self.pending: dict[str, tuple[int, float]] = {}  # this step's value, not counted yet

    def define(self, name: str, summary: Any) -> None:
        if summary is None:
            return  # a later call about something else (step_metric, say) keeps the summary
        modes = [m.strip().lower() for m in str(summary).split(",")]
        self.modes[name] = tuple(m for m in modes if m in _MODES)

    def _modes_of(self, key: str) -> tuple[str, ...]:
        if key in self.modes:  # an exact name before any glob, as W&B matches them
            return self.modes[key]
        return next((m for pattern, m in self.modes.items() if _glob_matches(pattern, key)), ())

    def add(self, logged: dict[str, float], step: int) -> None:
        for key, value in logged.items():
            if not self._modes_of(key):
                continue
            held = self.pending.get(key)
            if held is not None and held[0] != step:
                self._count(key, held[1])
            self.pending[key] = (step, value)

    def _count(self, key: str, value: float) -> None:
        found = self.stats.get(key)
        if found is None:
            self.stats[key] = [value, value, value, 1.0, value, value]
            return
        nan = math.nan
        found[0] = nan if math.isnan(value) or math.isnan(found[0]) else min(found[0], value)
        found[1] = nan if math.isnan(value) or math.isnan(found[1]) else max(found[1], value)
        found[2] += value
        found[3] += 1
        found[5] = value

    def values(self) -> dict[str, float]:
        for key, (_, value) in self.pending.items():
            self._count(key, value)
        self.pending.clear()
        out = {}
        for key, (low, high, total, count, first, last) in self.stats.items():
            of = {"min": low, "max": high, "mean": total / count, "first": first, "last": last}
            out.update({f"{key}.{mode}": of[mode] for mode in self._modes_of(key)})
        return out


def _glob_matches(pattern: str, key: str) -> bool:
    """W&B's metric globs: ``*`` matches anything, every other character itself (``x[1]`` too)."""
    if "*" not in pattern:
        return False
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, key) is not None


_unsent: list[_Written] = []
_sent_lock = threading.Lock()


def _written(summary: Any, create: bool = True) -> _Written | None:
    """Kept on the run's Summary, read through ``vars``: its attribute lookup asks wandb's service."""
    state = vars(summary).get("_sweeper_written")
    if state is None and create:
        state = _Written()
        object.__setattr__(summary, "_sweeper_written", state)
        _unsent.append(state)
    return state


def _note(state: _Written, record: Any) -> None:
    """Follow one summary diff: a key set or removed replaces all it held (``a`` holds ``a.b``)."""
    for item in [*record.remove, *record.update]:
        name = ".".join(str(part) for part in item.key)
        for key in [k for k in state.values if k == name or k.startswith(name + ".")]:
            del state.values[key]
    for item in record.update:
        state.values.update(core.flat({".".join(str(part) for part in item.key): item.value}))


def _send(state: _Written) -> None:
    """One record per run, at its last logged step: as the newest point, it is the trial's value.

    Marked sent only once written: a stop's SystemExit in between sends it again at exit, under
    the same seq, which the agent reads once (and the store keeps once, in a function trial)."""
    try:
        with _sent_lock:
            if state.sent or state.detached:
                return
            if state.seq is None:
                state.seq = core.next_seq("wandb")
        values = state.summary()
        core.emit("wandb", state.summary_step(values), values, seq=state.seq, once=True)
        state.sent = True
        if state in _unsent:
            _unsent.remove(state)
    except Exception:
        pass


def _send_unsent() -> None:
    """At exit, for runs the script never finished (a stop's SIGTERM ends up here too)."""
    for state in list(_unsent):
        _send(state)


def _internally(method: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _internal.depth = getattr(_internal, "depth", 0) + 1
        try:
            return method(*args, **kwargs)
        finally:
            _internal.depth -= 1

    return wrapper


def patch(module: Any) -> None:
    from wandb.sdk import wandb_run, wandb_settings, wandb_summary  # already imported by ``import wandb``

    _unknown_to_wandb(wandb_settings.Settings)
    run_cls = wandb_run.Run
    original = _internally(run_cls._log)

    def _log(self: Any, data: Any, step: Any = None, commit: Any = None) -> Any:
        try:
            current = int(getattr(self, "_local_step", 0))
            at = int(step) if step is not None else current
        except Exception:
            current = at = 0
        result = original(self, data, step, commit)
        if at < current:
            return result  # W&B drops values logged at a step below the run's current one
        try:
            state = _written(self.summary)
            if state.detached:
                return result
            logged = core.flat(data)
            core.emit("wandb", at, logged)
            state.step = max(state.step, at)
            state.logged_at.update(dict.fromkeys(logged, at))
            state.aggregates.add(logged, at)
            for name in [*logged, *data]:  # logged again, W&B's summary holds the logged value again
                state.values.pop(str(name), None)
        except Exception:
            pass
        return result

    run_cls._log = _log
    public_log = run_cls.log

    def log(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = public_log(self, *args, **kwargs)
        # From the script's own call only: wandb.watch logs through _log from gradient hooks.
        core.raise_if_stopped()
        return result

    run_cls.log = log
    define_metric = run_cls.define_metric

    def defined(self: Any, name: Any, *args: Any, **kwargs: Any) -> Any:
        result = define_metric(self, name, *args, **kwargs)
        try:
            summary = kwargs.get("summary", args[3] if len(args) > 3 else None)
            _written(self.summary).aggregates.define(str(name), summary)
        except Exception:
            pass
        return result

    run_cls.define_metric = defined
    # Every summary write (item, attribute, update, nested, delete) reaches the root's _update as one
    # diff; wandb.log's own summary is made by wandb's service, and a resumed run's comes in here.
    run_cls._set_run_obj = _internally(run_cls._set_run_obj)
    summary_update = wandb_summary.Summary._update

    def _update(self: Any, record: Any) -> Any:
        result = summary_update(self, record)
        if not getattr(_internal, "depth", 0) and core.followed():
            try:
                _note(_written(self), record)
            except Exception:
                pass
        return result

    wandb_summary.Summary._update = _update
    finish = run_cls._finish  # what finish(), wandb.finish(), ``with`` and reinit all end in

    def _finish(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            state = _written(self.summary, create=False)
            if state is not None:
                _send(state)
        except Exception:
            pass
        return finish(self, *args, **kwargs)

    run_cls._finish = _finish
    atexit.register(_send_unsent)
    init = module.init

    def wandb_init(*args: Any, **kwargs: Any) -> Any:
        trial = core.current_trial()
        if trial is not None:
            trial.check_environment("wandb.init()")
        if trial is not None and not trial.wandb_reset:
            run = _init_beside_open_run(init, trial, args, kwargs)
        else:
            run = init(*args, **_as_in_a_sweep(kwargs, trial is not None))
        if trial is not None:
            _check_trial_run(trial, run)
        if _detached(run):
            return run
        # Tells the agent's W&B adapter that the script keeps its own run for this trial.
        core.mark(
            "wandb-run.json", json.dumps({"id": getattr(run, "id", None), "dir": getattr(run, "dir", None)})
        )
        # After wandb's own exit hook, which init registers, so ours runs first (atexit is LIFO).
        atexit.unregister(_send_unsent)
        atexit.register(_send_unsent)
        if not core.agent_process:
            _exit_cleanly_on_sigterm()
        elif trial is not None and run not in trial.opened_wandb_runs:
            trial.opened_wandb_runs.append(run)
        return run

    module.init = wandb_init


def _unknown_to_wandb(settings_cls: Any) -> None:
    """wandb records the sweep a run belongs to (``WANDB_SWEEP_ID``, which the trial's environment
    holds for the script to read, as under ``wandb agent``), and W&B's server refuses a run that
    names a sweep it does not know: when the run is made (online) or synced (``wandb sync``). A
    sweeper sweep is not one of W&B's, so wandb is not told of it; what else ``wandb agent``'s
    sweep id does is done by :func:`_as_in_a_sweep`, and the config locks come from the trial's
    parameter file as before."""
    # update_from_env_vars from wandb 0.19 (pydantic settings), _apply_env_vars before.
    for name in ("update_from_env_vars", "_apply_env_vars"):
        if (from_env := getattr(settings_cls, name, None)) is not None:
            setattr(settings_cls, name, _without_sweep(from_env))
            return


def _without_sweep(from_env: Any) -> Any:
    def reads(self: Any, environ: Any, *args: Any, **kwargs: Any) -> Any:
        return from_env(
            self, {k: v for k, v in dict(environ).items() if k != "WANDB_SWEEP_ID"}, *args, **kwargs
        )

    return reads


# What wandb.init() ignores in a sweep run, for the trial's own: the argument, and the variable of
# the trial's environment that holds the trial's value.
_SWEEP_DECIDES = (("id", "WANDB_RUN_ID"), ("project", "WANDB_PROJECT"), ("entity", "WANDB_ENTITY"))


def _as_in_a_sweep(kwargs: dict[str, Any], function_trial: bool) -> dict[str, Any]:
    """``wandb.init()``'s arguments for the trial's run: its id, project and entity are those of the
    trial's environment (the sweep's project and entity, else the agent's own WANDB_PROJECT and
    WANDB_ENTITY), as under ``wandb agent``, where wandb ignores those given to ``init`` (and says
    so). Where the environment has none, the script's own stands."""
    if not function_trial and (
        core.TRIAL_WANDB_SWEEP is None or os.environ.get("WANDB_SWEEP_ID") != core.TRIAL_WANDB_SWEEP
    ):
        return kwargs  # not a trial's run, or one the script took out of the sweep (see _detached)
    kept = dict(kwargs)
    for name, variable in _SWEEP_DECIDES:
        if kept.get(name) is not None and os.environ.get(variable):
            print(
                f"sweeper: wandb.init({name}={kept[name]!r}) is ignored, as when running a W&B sweep: "
                f"the trial's run has {variable}={os.environ[variable]!r}",
                file=sys.stderr,
            )
            del kept[name]
    return kept


def _detached(run: Any) -> bool:
    """A run opened after the script took the sweep's variables away (W&B's cross-validation
    example: each fold's worker process clears ``WANDB_*`` and opens a run of its own): outside
    the sweep for W&B too, which reads only the trial's run, so what it logs is not the trial's.
    Marked so. A run whose id the script chose (``WANDB_RUN_ID`` set to resume one) stays in."""
    sweep, trial_run = core.TRIAL_WANDB_SWEEP, core.TRIAL_WANDB_RUN
    if sweep is None or os.environ.get("WANDB_SWEEP_ID") == sweep or getattr(run, "id", None) == trial_run:
        return False
    try:
        _written(run.summary).detached = True
    except Exception:
        return False
    return True


def _exit_cleanly_on_sigterm() -> None:
    """A stop is SIGTERM: turn it into SystemExit so wandb's exit hook finishes (and flushes) the run.

    Only when the script left SIGTERM at its default, which would end the process on the spot.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def finish_opened_runs(opened: list[Any], exit_code: int) -> None:
    """End the runs an in-process trial opened and left open, with the trial's exit code (1 failed,
    143 stopped), as ``wandb agent`` does after the function returns: the next trial's
    ``wandb.init()`` would otherwise get the same run back."""
    while opened:
        run = opened.pop()
        if not getattr(run, "_is_finished", True):
            try:
                run.finish(exit_code=exit_code)
            except Exception as exc:
                print(f"sweeper: cannot finish the trial's W&B run: {exc}", file=sys.stderr)


def reset_for_trial(trial: core.InProcess) -> None:
    """Tear wandb's set-up down so the next ``wandb.init()`` reads the environment, which now holds
    an in-process trial's variables (run id, sweep, config file, project).

    wandb reads its environment once, when first set up; ``wandb agent`` tears that down before
    each function it calls, and so does this, unless a W&B run is open in the process (sweeper's
    own W&B tracking keeps a sweep's run open, say), which a teardown would end: then the trial's
    ``wandb.init()`` is given the trial's settings (:func:`_init_beside_open_run`)."""
    if not core.alone(trial):  # the environment holds another trial's variables: nothing to read
        trial.wandb_reset = False
        return
    if "wandb" not in sys.modules:
        return  # imported later, it reads the environment then
    try:
        from wandb.sdk import wandb_setup

        current = getattr(wandb_setup, "_singleton", None)
        if current is None:
            return
        if current.most_recent_active_run is None:
            sys.modules["wandb"].teardown()
        else:
            trial.wandb_reset = False
    except BaseException as exc:  # a teardown may sys.exit with the service's exit code
        trial.wandb_reset = False
        print(f"sweeper: cannot make wandb read the trial's settings: {exc!r}", file=sys.stderr)


def _init_beside_open_run(init: Any, trial: core.InProcess, args: Any, kwargs: dict[str, Any]) -> Any:
    """``wandb.init()`` in a function trial while another W&B run is open in this process (sweeper's
    W&B tracking keeps the sweep's run open): wandb set itself up before the trial's variables were
    in the environment, and the teardown that would make it read them would end that run.

    The trial's variables are given to ``init`` as settings instead, for a run beside the open one
    (``reinit="create_new"``), with the trial's parameters over the function's own config, and
    the trial's project, entity and run id over any given to ``init``, as under ``wandb.agent``."""
    from wandb.sdk import wandb_setup

    import wandb

    if not _creates_runs_beside(wandb.__version__):
        raise RuntimeError(
            "sweeper: wandb.init() in a function trial while another W&B run is open in this "
            f"process (sweeper's W&B tracking keeps the sweep's run open) needs wandb 0.19.10 or "
            f"later (this is {wandb.__version__}) to open the trial's run beside it; upgrade wandb, "
            "run the sweep's trials as a command, or leave integrations.wandb out of the sweep file"
        )
    variables = {name: value for name, value in trial.environment.items() if name.startswith("WANDB_")}
    settings = wandb.Settings()
    settings.update_from_env_vars(variables)
    given = kwargs.get("settings")
    if isinstance(given, dict):
        given = wandb.Settings(**given)
    if given is not None:
        where = {name: getattr(settings, name) for name in ("run_id", "project", "entity")}
        settings.update_from_settings(given)
        settings.update_from_dict(where)  # the sweep decides where the run goes, as wandb does
    kwargs = {k: v for k, v in kwargs.items() if k not in ("project", "entity", "id")}
    kwargs.update(settings=settings, reinit="create_new")
    # wandb reads the sweep's parameters from the setup's path, and compares the environment with
    # the one it was set up in (it would warn that the trial's variables are ignored: they are not).
    with init_lock:
        setup = wandb_setup.singleton()
        before = (setup.settings.sweep_param_path, setup._sweep_config, setup._settings_environ)
        setup.settings.sweep_param_path = variables.get("WANDB_SWEEP_PARAM_PATH")
        setup._sweep_config = None
        setup._settings_environ = os.environ.copy()
        try:
            run = init(*args, **kwargs)
        finally:
            setup.settings.sweep_param_path, setup._sweep_config, setup._settings_environ = before
    # A run beside another is not wandb's global one; the trial's is, as under wandb.agent
    # (``wandb.log``, ``wandb.config``); finishing it clears that again.
    from wandb.sdk.wandb_init import _set_global_run

    _set_global_run(run)
    return run


def _creates_runs_beside(version: str) -> bool:
    """Whether this wandb opens a run beside another (``reinit="create_new"``, from 0.19.10)."""
    numbers = [int(part) for part in re.findall(r"\d+", version)[:3]]
    return numbers >= [0, 19, 10]


def _check_trial_run(trial: core.InProcess, run: Any) -> None:
    expected = trial.environment.get("WANDB_RUN_ID")
    found = getattr(run, "id", None)
    if expected is not None and found != expected and run not in trial.opened_wandb_runs:
        raise RuntimeError(
            f"sweeper: wandb.init() gave the function trial W&B run {found!r}, not its own "
            f"({expected!r}): another run is open in this process"
        )
