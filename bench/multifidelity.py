"""Multi-fidelity benchmark: stopping rules and Hyperband-style methods on learning-curve problems.

    python -m bench.multifidelity [--quick] [--seeds 10] [--full-trials 40]

Each sweep is replayed in simulated time by an event-driven simulator with a fake clock: workers
run trials epoch by epoch (each epoch costs its configuration's simulated seconds), and every
value is reported to the method under test as it arrives, so 8 asynchronous workers take seconds.
sweeper's rules and strategies are driven directly (the same objects the coordinator runs);
Optuna through ask/report/should_prune; W&B's hyperband rule through the ``sweeps`` package.

Figures, per problem and method, over seeds: median and IQR of log10 regret (true final loss of
the best configuration that completed the full budget, minus the best in the space) at fixed
fractions of the budget; the share of full-budget random search's resource a method needed to
reach random search's final regret (goal: at most 0.2), with 8 workers and, for sweeper's
methods, with 1; and the simulated wall time of 8 asynchronous workers against 1 for the same
resource (goal: at least 6x faster).

The target regret is the median final regret of full-budget random search over 100 reference
runs with their own seeds, which no method under test shares: with the same seed, the methods that
draw configurations as random search does would meet random's own best configuration in their
stream, a head start that model-based samplers (BOHB, TPE) do not get.

With 8 workers the share has a floor near ``workers / full trials``: while the winning trial runs
its full budget, the other workers spend about as much each. The oracle row measures it: random
configurations, each stopped after one epoch unless its final regret meets the target, which no
stopping rule can undercut. ``--full-trials`` sets random search's budget (results in
``multifidelity-<N>trials.*``), so the goal can be read where that floor is below it.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.curves import CurveProblem, problems
from sweeper.files import write_atomic
from sweeper.planning import suggestion_rng
from sweeper.spec import parse_sweep
from sweeper.stopping import StoppingRule, TrialCurve, build_rule
from sweeper.strategies import Strategy, SuggestionKind, strategy_class
from sweeper.trials import MetricPoint, Trial, TrialState

RESULTS = Path(__file__).parent / "results"
ETA = 3
FRACTIONS = (0.25, 0.5, 1.0)
FULL_TRIALS = 40  # full-budget random search runs this many trials; every method gets its resource
WORKERS = 8
REFERENCE_SEED = 10_000  # seeds of the random-search runs that set the target regret
REFERENCE_RUNS = 100  # cheap, and enough that the target does not swing with a few lucky runs
# Rows of the results that the one-worker runs, the summary and the tests refer to by name.
RANDOM_FULL = "random (full budget)"
HYPERBAND_RULE = "sweeper: random + hyperband rule"
ASHA_RULE = "sweeper: random + asha rule"
METHOD_HYPERBAND = "sweeper: method hyperband"
METHOD_HYPERBAND_1 = "sweeper: method hyperband, 1 bracket"
METHOD_BOHB = "sweeper: method bohb"
BOHB_NO_HISTORY = "sweeper: method bohb, no history"
ORACLE = "oracle: random + stop every trial that misses the target"
ONE_WORKER = (RANDOM_FULL, HYPERBAND_RULE, ASHA_RULE, METHOD_HYPERBAND, METHOD_HYPERBAND_1)
ONE_WORKER += (METHOD_BOHB, BOHB_NO_HISTORY, ORACLE)


# --- the methods under test: each answers ask() with a config and report() with stop or not ---


class Runner:
    name: str

    def ask(self) -> tuple[Any, dict[str, Any]] | None: ...

    def report(self, key: Any, epoch: int, value: float) -> bool: ...

    def end(self, key: Any, stopped: bool) -> None: ...


class SweeperRunner(Runner):
    """sweeper's strategy and stopping rule, fed the same records the coordinator keeps."""

    def __init__(self, name: str, raw: Mapping[str, Any], seed: int, with_history: bool) -> None:
        self.name = name
        self.spec = parse_sweep(raw)
        self.strategy: Strategy = strategy_class(self.spec.method)(self.spec)
        self.rule: StoppingRule | None = build_rule(self.spec)
        self.seed = seed
        self.trials: list[Trial] = []
        self.curves: dict[int, TrialCurve] = {}
        self.with_history = with_history  # BOHB reads budgets from loaded histories
        self.clock = 0.0

    def ask(self) -> tuple[Any, dict[str, Any]] | None:
        suggestion = self.strategy.suggest(self.trials, suggestion_rng(self.seed, self.trials))
        if suggestion.kind is not SuggestionKind.RUN:
            return None
        number = len(self.trials) + 1
        history = () if self.with_history else None
        self.trials.append(
            Trial(
                id=number,
                sweep_id="b",
                number=number,
                config=suggestion.config,
                state=TrialState.RUNNING,
                created_at=0.0,
                history=history,
            )
        )
        self.curves[number] = TrialCurve(number, ())
        return number, dict(suggestion.config)

    def report(self, key: Any, epoch: int, value: float) -> bool:
        point = MetricPoint("loss", value, step=epoch, seq=epoch, time=self.clock)
        curve = self.curves[key] = TrialCurve(key, (*self.curves[key].points, point))
        trial = self.trials[key - 1]
        history = (*trial.history, point) if trial.history is not None else None
        self.trials[key - 1] = dataclasses.replace(trial, summary={"loss": value}, history=history)
        if self.rule is None:
            return False
        decision = self.rule.decide(curve, list(self.curves.values()))
        if decision is not None:
            self.trials[key - 1] = dataclasses.replace(self.trials[key - 1], stop_requested=decision.reason)
        return decision is not None

    def end(self, key: Any, stopped: bool) -> None:
        trial = self.trials[key - 1]
        state = TrialState.STOPPED if stopped else TrialState.FINISHED
        self.trials[key - 1] = dataclasses.replace(trial, state=state, stop_reason=trial.stop_requested)


class OracleRunner(Runner):
    """Random configurations; every trial that will miss the target is stopped after one epoch.

    No stopping rule can spend less on random search's configurations, so its share is the floor
    of every rule row; with several workers it shows what the other workers spend while the
    winning trial runs its full budget.
    """

    def __init__(self, problem: CurveProblem, raw: Mapping[str, Any], seed: int, target: float) -> None:
        self.name = "oracle"
        self.problem = problem
        self.target = target
        self.inner = SweeperRunner("random", {**raw, "method": "random"}, seed, False)
        self.configs: dict[Any, dict[str, Any]] = {}

    def ask(self) -> tuple[Any, dict[str, Any]] | None:
        got = self.inner.ask()
        if got is not None:
            self.configs[got[0]] = got[1]
        return got

    def report(self, key: Any, epoch: int, value: float) -> bool:
        return self.problem.final(self.configs[key]) - self.problem.best > self.target

    def end(self, key: Any, stopped: bool) -> None:
        self.inner.end(key, stopped)


class WandbRunner(Runner):
    """Random configurations; W&B's own hyperband rule (the ``sweeps`` package) on each report."""

    def __init__(self, raw: Mapping[str, Any], seed: int) -> None:
        from sweeps.hyperband_stopping import hyperband_stop_runs

        from sweeps import RunState, SweepRun

        self.name = "W&B sweeps: hyperband rule"
        self._stop, self._run_cls, self._running = hyperband_stop_runs, SweepRun, RunState
        self.config = {**raw, "method": "random"}
        self.inner = SweeperRunner("random", {**raw, "method": "random"}, seed, False)
        self.runs: dict[int, Any] = {}

    def ask(self) -> tuple[Any, dict[str, Any]] | None:
        got = self.inner.ask()
        if got is not None:
            self.runs[got[0]] = self._run_cls(name=str(got[0]), state=self._running.running, history=[])
        return got

    def report(self, key: Any, epoch: int, value: float) -> bool:
        run = self.runs[key]
        run.history.append({"loss": value})
        stop = self._stop([r for r in self.runs.values() if r.history], self.config)
        return any(r.name == run.name for r in stop)

    def end(self, key: Any, stopped: bool) -> None:
        self.runs[key].state = self._running.killed if stopped else self._running.finished


class OptunaRunner(Runner):
    def __init__(self, name: str, problem: CurveProblem, seed: int, sampler: str, pruner: str) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.name = name
        self.optuna = optuna
        samplers = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler}
        r = problem.max_epochs
        pruners = {
            "sha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=ETA),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(
                min_resource=1, max_resource=r, reduction_factor=ETA
            ),
        }
        # A fixed name: the Hyperband pruner assigns brackets by hashing it, so runs repeat.
        self.study = optuna.create_study(
            study_name=f"{name}:{seed}", sampler=samplers[sampler](seed=seed), pruner=pruners[pruner]()
        )
        self.distributions = _optuna_space(optuna, problem.parameters)
        self.trials: dict[int, Any] = {}
        self.last: dict[int, float] = {}

    def ask(self) -> tuple[Any, dict[str, Any]] | None:
        trial = self.study.ask(self.distributions)
        self.trials[trial.number] = trial
        return trial.number, dict(trial.params)

    def report(self, key: Any, epoch: int, value: float) -> bool:
        trial = self.trials[key]
        trial.report(value, step=epoch)
        self.last[key] = value
        return trial.should_prune()

    def end(self, key: Any, stopped: bool) -> None:
        trial = self.trials[key]
        if stopped:
            self.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(trial, self.last[key])


def _optuna_space(optuna: Any, parameters: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for name, p in parameters.items():
        if "values" in p:
            out[name] = optuna.distributions.CategoricalDistribution(p["values"])
        elif p["distribution"] == "log_uniform_values":
            out[name] = optuna.distributions.FloatDistribution(p["min"], p["max"], log=True)
        elif p["distribution"] == "uniform":
            out[name] = optuna.distributions.FloatDistribution(p["min"], p["max"])
        elif p["distribution"] == "int_uniform":
            out[name] = optuna.distributions.IntDistribution(p["min"], p["max"])
        else:
            raise ValueError(f"{name}: no Optuna form for {p['distribution']}")
    return out


# --- the simulator ---


@dataclasses.dataclass
class Trace:
    resource: list[float]  # epochs used when each full-budget result arrived
    wall: list[float]  # simulated seconds at that moment
    regret: list[float]  # regret of the incumbent after it
    total_resource: float
    total_wall: float


def simulate(runner: Runner, problem: CurveProblem, workers: int, budget: float, seed: int) -> Trace:
    """Replay a sweep: ``workers`` asynchronous workers, until ``budget`` epochs are spent."""
    rng = random.Random(f"curves:{seed}")
    clock, used = 0.0, 0.0
    best_seen, incumbent_regret = math.inf, math.inf
    trace = Trace([], [], [], 0.0, 0.0)
    events: list[tuple[float, int, int]] = []  # (time, worker, trial slot)
    running: dict[int, tuple[Any, dict[str, Any], list[float], int]] = {}

    def start(worker: int) -> None:
        nonlocal used
        if used >= budget:
            return
        got = runner.ask()
        if got is None:
            return
        key, config = got
        running[worker] = (key, config, problem.curve(config, rng), 0)
        used += 1
        heapq.heappush(events, (clock + problem.epoch_cost(config), worker, 0))

    for w in range(workers):
        start(w)
    while events:
        clock, worker, _ = heapq.heappop(events)
        if isinstance(runner, SweeperRunner):
            runner.clock = clock
        key, config, curve, done = running[worker]
        done += 1
        stop = runner.report(key, done, curve[done - 1])
        if done == problem.max_epochs or stop:
            runner.end(key, stopped=stop and done < problem.max_epochs)
            if done == problem.max_epochs and curve[-1] < best_seen:
                best_seen = curve[-1]
                incumbent_regret = max(problem.final(config) - problem.best, 0.0)
                trace.resource.append(used)
                trace.wall.append(clock)
                trace.regret.append(incumbent_regret)
            del running[worker]
            start(worker)
        elif used < budget:
            running[worker] = (key, config, curve, done)
            used += 1
            heapq.heappush(events, (clock + problem.epoch_cost(config), worker, 0))
        else:
            del running[worker]  # the budget is spent: the trial is cut here
    trace.total_resource, trace.total_wall = used, clock
    return trace


def regret_at(trace: Trace, resource: float) -> float:
    regret = math.inf
    for used, r in zip(trace.resource, trace.regret, strict=True):
        if used > resource:
            break
        regret = r
    return regret


def resource_to_reach(trace: Trace, target: float) -> float:
    for used, r in zip(trace.resource, trace.regret, strict=True):
        if r <= target:
            return used
    return math.inf


# --- the methods and the table ---


def sweep_file(
    problem: CurveProblem, method: str, extra: Mapping[str, Any] | None = None, brackets: int | None = None
) -> dict[str, Any]:
    parameters = dict(problem.parameters)
    raw: dict[str, Any] = {"method": method, "metric": {"name": "loss", "goal": "minimize"}}
    if method in ("hyperband", "bohb"):
        parameters["epochs"] = {"value": problem.max_epochs}
        resource: dict[str, Any] = {"name": "epochs", "min": 1, "eta": ETA}
        if brackets is not None:
            resource["brackets"] = brackets
        raw["sweeper"] = {"resource": resource}
    raw["parameters"] = parameters
    return {**raw, **(extra or {})}


def methods(problem: CurveProblem, target: float = math.inf) -> dict[str, Callable[[int], Runner]]:
    """The rows of a table; ``target`` (random search's final regret) is what the oracle knows."""
    r = problem.max_epochs
    hb = {"early_terminate": {"type": "hyperband", "min_iter": 1, "eta": ETA}}
    asha = {"early_terminate": {"type": "asha", "min_iter": 1, "eta": ETA, "max_iter": r}}
    return {
        RANDOM_FULL: lambda s: SweeperRunner("random", sweep_file(problem, "random"), s, False),
        HYPERBAND_RULE: lambda s: SweeperRunner("hb", sweep_file(problem, "random", hb), s, False),
        ASHA_RULE: lambda s: SweeperRunner("asha", sweep_file(problem, "random", asha), s, False),
        METHOD_HYPERBAND: lambda s: SweeperRunner("m-hb", sweep_file(problem, "hyperband"), s, False),
        # sweeper.resource.brackets: 1, asynchronous successive halving over the resource.
        METHOD_HYPERBAND_1: lambda s: SweeperRunner(
            "m-hb1", sweep_file(problem, "hyperband", brackets=1), s, False
        ),
        METHOD_BOHB: lambda s: SweeperRunner("bohb", sweep_file(problem, "bohb"), s, True),
        # BOHB given one result per trial (no metric history): what its model loses without rungs.
        BOHB_NO_HISTORY: lambda s: SweeperRunner("bohb-nh", sweep_file(problem, "bohb"), s, False),
        ORACLE: lambda s: OracleRunner(problem, sweep_file(problem, "random"), s, target),
        "W&B sweeps: random + hyperband rule": lambda s: WandbRunner(sweep_file(problem, "random", hb), s),
        "Optuna: random + SHA pruner": lambda s: OptunaRunner("o-r-sha", problem, s, "random", "sha"),
        "Optuna: TPE + SHA pruner": lambda s: OptunaRunner("o-t-sha", problem, s, "tpe", "sha"),
        "Optuna: TPE + Hyperband pruner": lambda s: OptunaRunner("o-t-hb", problem, s, "tpe", "hyperband"),
    }


def _log(x: float) -> float:
    return math.log10(max(x, 1e-4)) if math.isfinite(x) else math.inf


def _median_iqr(values: list[float]) -> tuple[float, float, float]:
    finite = sorted(values)
    q = statistics.quantiles(finite, n=4, method="inclusive") if len(finite) > 1 else [finite[0]] * 3
    return q[1], q[0], q[2]


def run(seeds: int, full_trials: int, workers: int) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": seeds, "workers": workers, "full_trials": full_trials, "problems": {}}
    for problem in problems():
        budget = full_trials * problem.max_epochs
        target = target_regret(problem, workers, budget)
        rows = methods(problem, target)
        table: dict[str, Any] = {}
        traces: dict[str, list[Trace]] = {}
        for name, make in rows.items():
            # The simulated clock is not time spent: this is the CPU the method's own code used.
            started = time.process_time()
            traces[name] = [simulate(make(s), problem, workers, budget, s) for s in range(seeds)]
            table[name] = {"cpu_seconds": round(time.process_time() - started, 2)}
        for name, ts in traces.items():
            row = table[name]
            for f in FRACTIONS:
                med, lo, hi = _median_iqr([_log(regret_at(t, f * budget)) for t in ts])
                row[f"log10_regret@{f:g}"] = {"median": med, "q1": lo, "q3": hi}
            shares = [resource_to_reach(t, target) / budget for t in ts]
            row["share_of_random_resource_to_reach_its_final_regret"] = _median_iqr(shares)[0]
            row["seeds_reaching_random_final_regret"] = sum(math.isfinite(x) for x in shares)
        for n in ONE_WORKER:
            ts = [simulate(rows[n](s), problem, 1, budget, s) for s in range(seeds)]
            shares = [resource_to_reach(t, target) / budget for t in ts]
            table[n]["share_1_worker"] = _median_iqr(shares)[0]
            if n in (ASHA_RULE, METHOD_HYPERBAND):
                speedups = [a.total_wall / b.total_wall for a, b in zip(ts, traces[n], strict=True)]
                table[n][f"wall_speedup_{workers}_vs_1"] = statistics.median(speedups)
        out["problems"][problem.name] = {
            "budget_epochs": budget,
            "best_final_loss": problem.best,
            "target_log10_regret": _log(target),
            "methods": table,
        }
        print(markdown_problem(problem.name, out["problems"][problem.name], workers), flush=True)
    return out


def target_regret(problem: CurveProblem, workers: int, budget: float) -> float:
    """The median final regret of full-budget random search over the reference runs."""
    random_search = methods(problem)[RANDOM_FULL]
    reference = [
        simulate(random_search(REFERENCE_SEED + s), problem, workers, budget, REFERENCE_SEED + s)
        for s in range(REFERENCE_RUNS)
    ]
    return statistics.median(t.regret[-1] if t.regret else math.inf for t in reference)


def _fmt(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.2f}"


def markdown_problem(name: str, result: Mapping[str, Any], workers: int) -> str:
    head = "| method | " + " | ".join(f"log10 regret @{f:g} budget" for f in FRACTIONS)
    head += f" | resource to reach random's final regret, {workers} workers (seeds reaching it)"
    head += f" | same, 1 worker | wall {workers} vs 1 worker | cpu s |"
    lines = [
        f"### {name} (budget {result['budget_epochs']} epochs; "
        f"target: random search's median final log10 regret {_fmt(result['target_log10_regret'])})",
        "",
        head,
        "|" + " --- |" * (len(FRACTIONS) + 5),
    ]
    for method, row in result["methods"].items():
        cells = []
        for f in FRACTIONS:
            r = row[f"log10_regret@{f:g}"]
            cells.append(f"{_fmt(r['median'])} [{_fmt(r['q1'])}, {_fmt(r['q3'])}]")
        share = row["share_of_random_resource_to_reach_its_final_regret"]
        share_cell = f"{_fmt(share)} ({row['seeds_reaching_random_final_regret']})"
        one = row.get("share_1_worker")
        one_cell = _fmt(one) if one is not None else ""
        speed = row.get(f"wall_speedup_{workers}_vs_1")
        speed_cell = f"{speed:.2f}x" if speed is not None else ""
        cells += [share_cell, one_cell, speed_cell, str(row["cpu_seconds"])]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_stem(quick: bool, seeds: int, full_trials: int, workers: int = WORKERS) -> str:
    """The results' file name: the reported run (10 seeds, 40 full trials, 8 workers) keeps its
    own files."""
    stem = "multifidelity"
    if quick:
        stem += "-quick"
    else:
        if full_trials != FULL_TRIALS:
            stem += f"-{full_trials}trials"
        if seeds != 10:
            stem += f"-{seeds}seeds"
    if workers != WORKERS:
        stem += f"-{workers}workers"
    return stem


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, a smaller budget: a smoke run")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument(
        "--full-trials",
        type=int,
        default=FULL_TRIALS,
        help=f"full-budget trials of random search, whose resource every method gets (default {FULL_TRIALS})",
    )
    args = parser.parse_args(argv)
    for flag in ("seeds", "workers", "full_trials"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, not {getattr(args, flag)}")
    seeds = 2 if args.quick else args.seeds
    full = 15 if args.quick else args.full_trials
    result = run(seeds, full, args.workers)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = results_stem(args.quick, seeds, full, args.workers)
    md = [
        f"# Multi-fidelity benchmark ({seeds} seeds, {args.workers} workers, "
        f"random search: {full} full trials)",
        "",
    ]
    md += [markdown_problem(name, r, args.workers) for name, r in result["problems"].items()]
    for suffix, text in ((".json", json.dumps(result, indent=2, default=str)), (".md", "\n".join(md))):
        write_atomic(RESULTS / f"{stem}{suffix}", text)


if __name__ == "__main__":
    main()
