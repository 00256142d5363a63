"""Population-based training on a toy problem where no fixed learning rate is good enough.

    python -m bench.pbt [--seeds 10] [--population 8]

The problem: noisy gradient descent on a quadratic, ``w <- w - lr * (w + sigma * noise)`` in 10
dimensions from ``w = 5``, for 600 steps; the loss is ``0.5 * mean(w**2)``. A large learning rate
reaches the bottom fast but then rattles around at a noise floor of about ``lr``; a small one has
a low floor but never gets there in 600 steps. The best fixed rate reaches about 0.013 at best
(``min over lr of lr + 12.5 * exp(-2 * lr * 600)``); a rate that starts large and decays reaches
far lower, and PBT finds such a schedule by exploiting and exploring (x0.8 / x1.2) on the way.

sweeper's PBT strategy and rule are driven in-process (the same objects the coordinator runs,
fed the same records the store keeps); checkpoints are the members' states in a dict. Each member
reports the loss after every 10 steps (an iteration). Compared over seeds, with the same noise
streams: PBT's best finished member against the best of the same population run with its initial,
fixed learning rates, and against the best of a dense grid of 40 fixed rates (an oracle no sweep
of the population's size would have).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

from sweeper.files import write_atomic
from sweeper.planning import suggestion_rng
from sweeper.spec import parse_sweep
from sweeper.stopping import PbtRule, TrialCurve, build_rule
from sweeper.strategies import SuggestionKind, strategy_class
from sweeper.trials import MetricPoint, Trial, TrialState

RESULTS = Path(__file__).parent / "results"
DIM, START, SIGMA = 10, 5.0, 2.0
STEPS, STEPS_PER_ITERATION = 600, 10
TARGET = 0.005  # "solved": a final loss below this; no fixed learning rate gets there
GRID = [10 ** (-4 + 4 * i / 39) for i in range(40)]


def sweep(population: int, seed: int) -> dict[str, Any]:
    return {
        "method": "pbt",
        "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1.0}},
        "sweeper": {
            "seed": seed,
            "pbt": {"population": population, "perturbation_interval": 4, "quantile": 0.25},
        },
    }


def loss(w: list[float]) -> float:
    return 0.5 * sum(x * x for x in w) / len(w)


def train(w: list[float], lr: float, steps: int, rng: random.Random) -> list[float]:
    for _ in range(steps):
        w = [x - lr * (x + SIGMA * rng.gauss(0.0, 1.0)) for x in w]
        if not all(math.isfinite(x) and abs(x) < 1e6 for x in w):
            return [1e6] * len(w)  # diverged
    return w


def fixed(lr: float, seed: int, member: int) -> float:
    rng = random.Random(f"{seed}:noise:{member}")
    return loss(train([START] * DIM, lr, STEPS, rng))


@dataclasses.dataclass
class Member:
    trial: int
    w: list[float]
    step: int
    rng: random.Random


def run_pbt(population: int, seed: int) -> dict[str, Any]:
    """One PBT sweep in simulated rounds: every training member takes one iteration per round."""
    spec = parse_sweep(sweep(population, seed))
    strategy = strategy_class("pbt")(spec)
    rule = build_rule(spec)
    assert isinstance(rule, PbtRule)
    trials: dict[int, Trial] = {}
    points: dict[int, list[MetricPoint]] = {}
    checkpoints: dict[str, tuple[list[float], int]] = {}
    running: dict[int, Member] = {}
    exploits = 0

    def location(number: int) -> str:
        return f"mem://{number}"

    def start_trials() -> None:
        while True:
            history = sorted(trials.values(), key=lambda t: t.number)
            suggestion = strategy.suggest(history, suggestion_rng(seed, history))
            if suggestion.kind is not SuggestionKind.RUN:
                return
            number = len(trials) + 1
            trials[number] = Trial(
                id=number,
                sweep_id="b",
                number=number,
                config=suggestion.config,
                state=TrialState.RUNNING,
                created_at=0.0,
                member=suggestion.member,
                restore_from=suggestion.restore_from,
            )
            points[number] = []
            w, step = [START] * DIM, 0
            if suggestion.restore_from is not None:
                donor = int(suggestion.restore_from.rsplit("/", 1)[1])
                w, step = checkpoints[location(donor)]
            rng = random.Random(f"{seed}:noise:{suggestion.member}:{number}")
            running[number] = Member(number, list(w), step, rng)

    clock = 0.0
    start_trials()
    while running:
        for number in sorted(running):
            member = running[number]
            trial = trials[number]
            member.w = train(member.w, float(trial.config["lr"]), STEPS_PER_ITERATION, member.rng)
            member.step += STEPS_PER_ITERATION
            checkpoints[location(number)] = (list(member.w), member.step)  # saved, then logged
            clock += 1.0
            seq = len(points[number])
            points[number].append(MetricPoint("loss", loss(member.w), member.step, seq, clock))
            trial = trials[number] = dataclasses.replace(trial, summary={"loss": loss(member.w)})
            if member.step >= STEPS:
                trials[number] = dataclasses.replace(trial, state=TrialState.FINISHED)
                del running[number]
                continue
            curves = [TrialCurve(n, tuple(p), trials[n]) for n, p in points.items() if p]
            decision = rule.decide(TrialCurve(number, tuple(points[number]), trial), curves)
            if decision is not None:
                exploits += 1
                trials[number] = dataclasses.replace(
                    trial,
                    state=TrialState.STOPPED,
                    stop_requested=decision.reason,
                    stop_reason=decision.reason,
                )
                del running[number]
        start_trials()
    finished = [t for t in trials.values() if t.state is TrialState.FINISHED]
    best = min(finished, key=lambda t: t.summary["loss"])
    initial = [t.config["lr"] for t in sorted(trials.values(), key=lambda t: t.number)[:population]]
    schedule = []  # the winner's learning rate along its lineage
    node: Trial | None = best
    while node is not None:
        schedule.append(float(node.config["lr"]))
        node = trials[int(node.restore_from.rsplit("/", 1)[1])] if node.restore_from else None
    return {
        "loss": best.summary["loss"],
        "initial_lrs": initial,
        "trials": len(trials),
        "exploits": exploits,
        "winner_lr_first_to_last": schedule[::-1],
    }


def run(seeds: int, population: int) -> dict[str, Any]:
    rows = []
    started = time.process_time()
    for seed in range(seeds):
        pbt = run_pbt(population, seed)
        fixed_members = [fixed(lr, seed, m) for m, lr in enumerate(pbt["initial_lrs"])]
        oracle = min(fixed(lr, seed, 0) for lr in GRID)
        rows.append(
            {
                "seed": seed,
                "pbt": pbt["loss"],
                "best_fixed_member": min(fixed_members),
                "best_fixed_grid_of_40": oracle,
                "trials": pbt["trials"],
                "exploits": pbt["exploits"],
                "winner_lr_first_to_last": pbt["winner_lr_first_to_last"],
            }
        )
    summary = {}
    for key in ("pbt", "best_fixed_member", "best_fixed_grid_of_40"):
        values = [r[key] for r in rows]
        summary[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "solved": sum(v < TARGET for v in values),
        }
    wins = sum(r["pbt"] < r["best_fixed_member"] for r in rows)
    return {
        "problem": {"dim": DIM, "start": START, "sigma": SIGMA, "steps": STEPS, "target": TARGET},
        "population": population,
        "seeds": seeds,
        "summary": summary,
        "pbt_beats_best_fixed_member": f"{wins} of {seeds} seeds",
        "cpu_seconds": round(time.process_time() - started, 1),
        "runs": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        f"# PBT toy problem ({result['seeds']} seeds, population {result['population']}, "
        f"{STEPS} steps, solved = final loss < {TARGET})",
        "",
        "| method | median final loss | best | worst | seeds solved |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {
        "pbt": "sweeper `method: pbt`",
        "best_fixed_member": "best fixed-lr member of the same population",
        "best_fixed_grid_of_40": "best of 40 fixed learning rates (oracle)",
    }
    for key, name in names.items():
        r = s[key]
        solved = f"{r['solved']} of {result['seeds']}"
        lines.append(f"| {name} | {r['median']:.4f} | {r['min']:.4f} | {r['max']:.4f} | {solved} |")
    lines += ["", f"PBT beats the best fixed member on {result['pbt_beats_best_fixed_member']}."]
    example = result["runs"][0]["winner_lr_first_to_last"]
    rates = ", ".join(f"{lr:.3g}" for lr in example)
    lines.append(f"Seed 0's winning lineage ran learning rates {rates} (first to last).")
    return "\n".join(lines) + "\n"


def results_stem(seeds: int, population: int) -> str:
    """The results' file name: the reported run (10 seeds, population 8) keeps ``pbt``; any other
    is named by what differs, so it never overwrites the reported results."""
    stem = "pbt"
    if seeds != 10:
        stem += f"-{seeds}seeds"
    if population != 8:
        stem += f"-population{population}"
    return stem


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--population", type=int, default=8)
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, not {args.seeds}")
    if args.population < 2:  # PBT's exploit copies one member to another
        parser.error(f"--population must be at least 2, not {args.population}")
    result = run(args.seeds, args.population)
    text = markdown(result)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for suffix, body in ((".json", json.dumps(result, indent=2)), (".md", text)):
        write_atomic(RESULTS / f"{results_stem(args.seeds, args.population)}{suffix}", body)


if __name__ == "__main__":
    main()
