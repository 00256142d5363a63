"""Search quality and suggestion speed: sweeper's bayes, tpe and random beside Optuna and W&B's engine.

    python -m bench.search [--quick] [--seeds 10] [--out FILE]

Every method runs on the same problems with the same seeds. Quality is log10 regret of the best
loss found after 20/40/60 trials (10/20/30 with ``--quick``, any counts with ``--budgets``; median
and interquartile range over seeds); speed is the time of one suggestion with 100, 200 and 1000
finished trials in the history, every tool timed in the same run.
"""

from __future__ import annotations

import os

# One BLAS/torch thread for every tool: fair, and faster for matrices this small.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bench.adapters import METHODS, optuna_distribution  # noqa: E402
from bench.latency import LATENCY_METHODS, measure_latency  # noqa: E402
from bench.problems import Problem, all_problems, problems_from  # noqa: E402
from sweeper.files import write_atomic  # noqa: E402
from sweeper.spec import SpecError, parse_sweep  # noqa: E402

BUDGETS = (20, 40, 60)
QUICK_BUDGETS = (10, 20, 30)
RESULTS = Path(__file__).parent / "results"
REFERENCE = ("optuna GP", "optuna TPE", "wandb bayes")
RANDOMS = ("sweeper random", "optuna random", "wandb random")


def log_regret(best: float, reference: float, floor: float) -> float:
    return math.log10(max(best - reference, floor))


def run_all(problems: list[Problem], methods: list[str], seeds: int, budget: int) -> dict:
    losses: dict[str, dict[str, list[list[float]]]] = {}
    seconds: dict[str, float] = {}
    for problem in problems:
        losses[problem.name] = {}
        for method in methods:
            start = time.perf_counter()
            losses[problem.name][method] = [METHODS[method](problem, budget, seed) for seed in range(seeds)]
            seconds[f"{problem.name}/{method}"] = time.perf_counter() - start
            print(
                f"  {problem.name:<12} {method:<15} {seconds[f'{problem.name}/{method}']:6.1f} s",
                file=sys.stderr,
            )
    return {"losses": losses, "seconds": seconds}


def summarise(problems: list[Problem], losses: dict, budgets: tuple[int, ...]) -> dict:
    """{problem: {method: {budget: [q25, median, q75]}}} of log10 regret."""
    out: dict = {}
    for problem in problems:
        runs = losses[problem.name]
        if problem.optimum is not None:
            reference, floor = problem.optimum, 1e-8
        else:  # real task: the best any method found, and regrets below 1e-3 count as found
            reference, floor = min(min(r) for per in runs.values() for r in per), 1e-3
        out[problem.name] = {}
        for method, per_seed in runs.items():
            row = {}
            for b in budgets:
                r = [log_regret(min(vals[:b]), reference, floor) for vals in per_seed]
                row[str(b)] = [float(np.percentile(r, 25)), float(np.median(r)), float(np.percentile(r, 75))]
            out[problem.name][method] = row
    return out


def goals(summary: dict, budget: int) -> dict:
    """Where sweeper's bayes median is no worse than the best reference tool, and than random search
    (None: none of those methods ran)."""
    out = {}
    for name, per_method in summary.items():
        med = {m: v[str(budget)][1] for m, v in per_method.items()}
        if "sweeper bayes" not in med:
            continue
        refs = [med[m] for m in REFERENCE if m in med]
        rands = [med[m] for m in RANDOMS if m in med]
        out[name] = {
            "vs_best_model_based": bool(med["sweeper bayes"] <= min(refs) + 1e-9) if refs else None,
            "vs_random": bool(med["sweeper bayes"] <= min(rands) + 1e-9) if rands else None,
        }
    return out


def markdown(summary: dict, budgets: tuple[int, ...], methods: list[str], latency: dict, seeds: int) -> str:
    lines = []
    for b in budgets:
        lines.append(
            f"\n**log10 regret after {b} trials** (median [IQR] over {seeds} seeds, lower is better)\n"
        )
        lines.append("| problem | " + " | ".join(methods) + " |")
        lines.append("| --- |" + " --- |" * len(methods))
        for name, per_method in summary.items():
            meds = {m: per_method[m][str(b)][1] for m in methods}
            best = min(meds.values())
            cells = []
            for m in methods:
                q25, med, q75 = per_method[m][str(b)]
                cell = f"{med:.2f} [{q25:.2f}, {q75:.2f}]"
                cells.append(f"**{cell}**" if med <= best + 1e-9 else cell)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if latency:
        sizes = sorted({int(k) for per in latency.values() for k in per})
        lines.append("\n**seconds per suggestion** (median of repeats; same machine, same run)\n")
        lines.append("| method | " + " | ".join(f"{n} trials" for n in sizes) + " |")
        lines.append("| --- |" + " --- |" * len(sizes))
        for m, per in latency.items():
            cells = [f"{per[str(n)]:.3f}" if str(n) in per else "-" for n in sizes]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def trial_counts(text: str) -> tuple[int, ...]:
    """``--budgets``: positive whole numbers separated by commas, sorted, each once."""
    try:
        counts = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"whole numbers separated by commas, not {text!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"positive trial counts, not {text!r}")
    return counts


def positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number, not {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {text!r}")
    return number


def _names(names: list[str], what: str) -> str:
    # A few names say which ran; more are counted, so the file name stays short.
    if len(names) > 3:
        return f"{len(names)}{what}"
    return "+".join(re.sub(r"[^A-Za-z0-9_.]+", "_", n) for n in names)


def results_stem(
    quick: bool, seeds: int, budgets: tuple[int, ...], methods: list[str], problems: list[str], latency: bool
) -> str:
    """The results' file name. The reported runs (every method on the built-in problems with the
    default seeds and budgets, latency measured) keep ``search`` and ``search_quick``; any other
    run is named by what differs, so a smoke run never overwrites the committed results."""
    parts = ["search_quick" if quick else "search"]
    if seeds != (3 if quick else 10):
        parts.append(f"{seeds}seeds")
    if budgets != (QUICK_BUDGETS if quick else BUDGETS):
        parts.append("_".join(map(str, budgets)) + "trials")
    if methods != list(METHODS):
        parts.append(_names(methods, "methods"))
    if problems != [p.name for p in all_problems(quick)]:
        parts.append(_names(problems, "problems"))
    if not latency:
        parts.append("nolatency")
    return "-".join(parts)


def problem_fault(problem: Problem, methods: list[str]) -> str | None:
    """What keeps a problem's parameters from running with these methods, or None: checked before
    any run, so a bad parameter does not end the benchmark after the methods before it ran."""
    tools = {m.split()[0] for m in methods}
    kinds = {"random", *(m.split()[1] for m in methods if m.startswith("sweeper "))}
    try:
        for kind in sorted(kinds):
            parse_sweep(problem.sweep(kind))
    except SpecError as exc:
        return "; ".join(str(p) for p in exc.problems)
    for name, p in problem.parameters.items():
        if "optuna" in tools:
            try:
                optuna_distribution(name, p)
            except ValueError as exc:
                return f"parameter {exc}"
        if "wandb" in tools:
            from sweeps.params import HyperParameter

            try:
                HyperParameter(name, dict(p))
            except Exception as exc:  # jsonschema's, or the engine's own checks
                return f"parameter {name}: W&B's engine refuses it: {str(exc).splitlines()[0]}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 problems, 3 seeds, 30 trials, latency at 100")
    parser.add_argument(
        "--seeds", type=positive, default=None, help="seeds per problem and method (default 10)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results as OUT's name with .json and .md (default: bench/results/search.json for the"
        " reported run, search_quick.json with --quick, a name that says what differs otherwise)",
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    parser.add_argument(
        "--problems", default="", help="comma-separated subset of the problems (of all of them, with --quick)"
    )
    parser.add_argument(
        "--problems-from",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a Python file defining PROBLEMS = [bench.problems.Problem(...)]: run those too (repeatable)",
    )
    parser.add_argument(
        "--budgets",
        type=trial_counts,
        metavar="N,N,...",
        help="trial counts to report regret at (default 20,40,60; 10,20,30 with --quick); the largest"
        " is each run's length",
    )
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    seeds = args.seeds or (3 if args.quick else 10)
    budgets = args.budgets or (QUICK_BUDGETS if args.quick else BUDGETS)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        parser.error(f"--methods: no method given; choose from {', '.join(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    # --quick keeps 4 of the built-in problems, unless --problems names the ones to run.
    problems = all_problems(args.quick and not args.problems)
    source = {p.name: "bench/problems" for p in problems}
    for path in args.problems_from:
        try:
            found = problems_from(path)
        except ValueError as exc:
            parser.error(str(exc))
        problems += found
        source.update({p.name: f"--problems-from {path}" for p in found})
    names = [p.name for p in problems]
    clash = sorted({name for name in names if names.count(name) > 1})
    if clash:
        parser.error(f"two problems named {', '.join(clash)}: give each its own name")
    if args.problems:
        wanted = [name.strip() for name in args.problems.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in names]
        if unknown or not wanted:
            what = ", ".join(unknown) or repr(args.problems)
            parser.error(f"no problem named {what}; choose from {', '.join(names)}")
        problems = [p for p in problems if p.name in wanted]
    for problem in problems:
        fault = problem_fault(problem, methods)
        if fault:
            parser.error(f"{source[problem.name]}: problem {problem.name}: {fault}")
    out = args.out or RESULTS / results_stem(
        args.quick, seeds, budgets, methods, [p.name for p in problems], not args.no_latency
    )
    # Both files are named from the stem, whatever suffix --out has: the JSON never lands on the .md.
    json_path, md_path = out.with_name(out.stem + ".json"), out.with_name(out.stem + ".md")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    started = time.perf_counter()
    raw = run_all(problems, methods, seeds, max(budgets))
    summary = summarise(problems, raw["losses"], budgets)
    latency = {}
    if not args.no_latency:
        sizes = (100,) if args.quick else (100, 200, 1000)
        latency = measure_latency([m for m in LATENCY_METHODS if m in methods], sizes)
    result = {
        "seeds": seeds,
        "budgets": list(budgets),
        "methods": methods,
        "summary": summary,
        "goals": goals(summary, max(budgets)),
        "latency": latency,
        "seconds": raw["seconds"],
        "losses": raw["losses"],
        "wall_seconds": time.perf_counter() - started,
    }
    table = markdown(summary, budgets, methods, latency, seeds)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(json_path, json.dumps(result, indent=1))
    write_atomic(md_path, table)
    if not args.no_plots:
        from bench.plots import best_so_far

        best_so_far(problems, raw["losses"], out.with_name(out.stem + "_best_so_far.png"))
    print(table)
    for goal, against in (
        ("vs_best_model_based", f"the best of {', '.join(REFERENCE)}"),
        ("vs_random", "random search"),
    ):
        compared = [v[goal] for v in result["goals"].values() if v[goal] is not None]
        if compared:
            print(
                f"bayes after {max(budgets)} trials no worse than {against}"
                f" on {sum(compared)}/{len(compared)} problems"
            )
        else:
            print(f"bayes not compared with {against}: none of it ran")
    print(f"wrote {json_path} and {md_path} in {result['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
