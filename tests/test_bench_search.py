"""``python -m bench.search --problems-from FILE``: problems of one's own beside the built-in ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench_search(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench.search, imported without leaving its one-thread BLAS defaults in this process."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))  # restored as it was afterwards
    import bench.search

    return bench.search


def search(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.search", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_a_problem_from_a_file_runs_with_every_method_asked_for(tmp_path: Path) -> None:
    problem_file = tmp_path / "mine.py"
    problem_file.write_text(
        textwrap.dedent(
            """
            from bench.problems import Problem

            PROBLEMS = [
                Problem(
                    "shifted_bowl",
                    {"x": {"min": -4.0, "max": 4.0}, "k": {"values": ["a", "b", "c"]}},
                    lambda c: (c["x"] - 1.5) ** 2 + {"a": 1.0, "b": 0.0, "c": 2.0}[c["k"]],
                    0.0,
                )
            ]
            """
        )
    )
    out = tmp_path / "result.json"
    done = search(
        "--quick",
        "--seeds",
        "2",
        "--methods",
        "sweeper random,sweeper tpe",
        "--problems",
        "shifted_bowl",
        "--problems-from",
        str(problem_file),
        "--no-latency",
        "--no-plots",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert list(result["losses"]) == ["shifted_bowl"]
    for method in ("sweeper random", "sweeper tpe"):
        runs = result["losses"]["shifted_bowl"][method]
        assert len(runs) == 2 and all(len(losses) == 30 for losses in runs)
        # Every loss is a value of this objective: never below its optimum, at most its worst corner.
        assert all(0.0 <= loss <= (4.0 + 1.5) ** 2 + 2.0 for losses in runs for loss in losses)
    assert "shifted_bowl" in out.with_suffix(".md").read_text()


def test_a_file_without_problems_is_refused_with_what_it_should_hold(tmp_path: Path) -> None:
    problem_file = tmp_path / "empty.py"
    problem_file.write_text("PROBLEMS = {'branin': 1}\n")
    done = search("--problems-from", str(problem_file), "--no-latency", "--no-plots")
    assert done.returncode == 2
    assert f"--problems-from {problem_file}: expected PROBLEMS = [Problem(...), ...]" in done.stderr

    broken = tmp_path / "broken.py"
    broken.write_text("from bench.problems import Problem\nPROBLEMS = [Problem(\n")
    done = search("--problems-from", str(broken))
    assert done.returncode == 2
    assert f"--problems-from {broken}: cannot load it: SyntaxError" in done.stderr

    missing = tmp_path / "nowhere.py"
    done = search("--problems-from", str(missing))
    assert done.returncode == 2
    assert f"--problems-from {missing}: no such file" in done.stderr


def test_a_problem_named_like_a_built_in_one_is_refused(tmp_path: Path) -> None:
    problem_file = tmp_path / "clash.py"
    problem_file.write_text(
        "from bench.problems import Problem\n"
        "PROBLEMS = [Problem('branin', {'x': {'min': 0.0, 'max': 1.0}}, lambda c: c['x'], 0.0)]\n"
    )
    done = search("--problems-from", str(problem_file))
    assert done.returncode == 2
    assert "two problems named branin" in done.stderr


def test_a_finite_space_smaller_than_the_budget_ends_the_sweep_and_nothing_is_compared_that_did_not_run(
    tmp_path: Path,
) -> None:
    problem_file = tmp_path / "small.py"
    problem_file.write_text(
        textwrap.dedent(
            """
            from bench.problems import Problem

            PROBLEMS = [
                Problem(
                    "six_choices",
                    {"k": {"values": [0, 1, 2]}, "flag": {"values": [True, False]}},
                    lambda c: c["k"] + (0.0 if c["flag"] else 0.5),
                    0.0,
                )
            ]
            """
        )
    )
    out = tmp_path / "result.json"
    args = [
        "--quick",
        "--seeds",
        "1",
        "--methods",
        "sweeper bayes,sweeper random",
        "--problems",
        "six_choices",
    ]
    done = search(
        *args, "--problems-from", str(problem_file), "--no-latency", "--no-plots", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    for method in ("sweeper bayes", "sweeper random"):
        (losses,) = result["losses"]["six_choices"][method]
        # Each of the 6 configurations once, then the sweep is over: nothing more runs.
        assert sorted(losses) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert result["goals"]["six_choices"] == {"vs_best_model_based": None, "vs_random": True}
    assert "bayes not compared with the best of" in done.stdout


def test_budgets_that_are_not_positive_trial_counts_are_refused_with_what_was_expected() -> None:
    for bad, expected in (("0,10", "positive trial counts, not '0,10'"), ("10,x", "whole numbers separated")):
        refused = search("--budgets", bad, "--no-latency")
        assert refused.returncode == 2 and expected in refused.stderr, refused.stderr


def test_only_the_reported_runs_write_the_committed_result_files(bench_search: ModuleType) -> None:
    from bench.adapters import METHODS
    from bench.problems import all_problems

    stem = bench_search.results_stem
    every, builtin, quick = (
        list(METHODS),
        [p.name for p in all_problems()],
        [p.name for p in all_problems(True)],
    )
    assert stem(False, 10, (20, 40, 60), every, builtin, True) == "search"
    assert stem(True, 3, (10, 20, 30), every, quick, True) == "search_quick"
    others = [
        stem(False, 1, (20, 40, 60), every, builtin, True),
        stem(False, 10, (100, 1200), every, builtin, True),
        stem(False, 10, (20, 40, 60), ["sweeper bayes", "optuna GP"], builtin, True),
        stem(False, 10, (20, 40, 60), every, ["branin", "mixed"], True),
        stem(False, 10, (20, 40, 60), every, [*builtin, "mine"], True),
        stem(False, 10, (20, 40, 60), every, builtin, False),
        stem(True, 1, (10, 20, 30), every, quick, True),
        stem(True, 3, (10, 20, 30), ["sweeper random"], ["levy"], False),
    ]
    assert len(set(others)) == len(others) and not {"search", "search_quick"} & set(others)
    assert others[2] == "search-sweeper_bayes+optuna_GP" and others[6] == "search_quick-1seeds"


def test_out_names_both_files_from_its_stem_and_quick_runs_any_problem_named(tmp_path: Path) -> None:
    out = tmp_path / "result.md"
    done = search(
        *("--quick", "--problems", "levy", "--methods", "sweeper random", "--seeds", "1", "--budgets", "3"),
        *("--no-latency", "--no-plots", "--out", str(out)),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "result.json").read_text())["losses"]["levy"]["sweeper random"]
    assert out.read_text().lstrip().startswith("**log10 regret after 3 trials**")


def test_unknown_problems_and_bad_counts_are_refused_before_anything_runs() -> None:
    refused = search("--problems", "branin,typo", "--no-latency")
    assert refused.returncode == 2
    assert "no problem named typo; choose from branin, hartmann6" in refused.stderr
    assert "levy" in refused.stderr and "svm_cancer" in refused.stderr
    for args, expected in (
        (("--seeds", "0"), "argument --seeds: at least 1, not '0'"),
        (("--seeds", "-1"), "argument --seeds: at least 1, not '-1'"),
        (("--methods", ","), "--methods: no method given; choose from sweeper bayes"),
    ):
        refused = search(*args, "--no-latency")
        assert refused.returncode == 2 and expected in refused.stderr, refused.stderr


def test_a_parameter_no_selected_method_can_run_is_refused_before_any_run(tmp_path: Path) -> None:
    problem_file = tmp_path / "mine.py"
    problem_file.write_text(
        textwrap.dedent(
            """
            from bench.problems import Problem

            PROBLEMS = [
                Problem("fine", {"x": {"min": 0.0, "max": 1.0}}, lambda c: c["x"], 0.0),
                Problem("normal", {"x": {"distribution": "normal"}}, lambda c: c["x"] ** 2, 0.0),
                Problem("upside_down", {"x": {"min": 2.0, "max": 1.0}}, lambda c: c["x"], 0.0),
            ]
            """
        )
    )
    common = ("--problems-from", str(problem_file), "--seeds", "1", "--no-latency", "--no-plots")
    common += ("--out", str(tmp_path / "result.json"))
    # Optuna has no normal distribution; sweeper's random and W&B's draw from one.
    refused = search(*common, "--problems", "fine,normal", "--methods", "sweeper random,optuna TPE")
    assert refused.returncode == 2
    assert (
        f"--problems-from {problem_file}: problem normal: parameter x: no Optuna distribution draws like"
        " W&B's normal" in refused.stderr
    )
    # Nothing ran, not even the problem before it: no line of run_all's progress ("fine ... 0.1 s").
    assert not any(line.endswith(" s") for line in refused.stderr.splitlines())
    refused = search(*common, "--problems", "fine,upside_down", "--methods", "sweeper random")
    assert refused.returncode == 2
    assert (
        f"--problems-from {problem_file}: problem upside_down: parameters.x: min must be less"
        in refused.stderr
    )
    assert not (tmp_path / "result.json").exists()


def test_optuna_draws_from_the_distribution_w_and_b_infers_or_refuses_by_name() -> None:
    import optuna.distributions as od

    from bench.adapters import optuna_distributions
    from bench.problems import Problem

    parameters = {
        "ints": {"min": 1, "max": 5},
        "floats": {"min": 1.0, "max": 5.0},
        "mixed": {"min": 1, "max": 5.0},
        "fixed": {"value": "adam"},
        "choice": {"values": [1, "a"]},
        "even": {"distribution": "q_uniform", "min": 0, "max": 10, "q": 2},
        "tenths": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.1},
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1.0},
    }
    got = optuna_distributions(Problem("space", parameters, lambda c: 0.0, 0.0))
    assert got == {
        "ints": od.IntDistribution(1, 5),
        "floats": od.FloatDistribution(1.0, 5.0),
        "mixed": od.FloatDistribution(1.0, 5.0),
        "fixed": od.CategoricalDistribution(["adam"]),
        "choice": od.CategoricalDistribution([1, "a"]),
        "even": od.IntDistribution(0, 10, step=2),
        "tenths": od.FloatDistribution(0.0, 1.0, step=0.1),
        "lr": od.FloatDistribution(1e-4, 1.0, log=True),
    }
    for bad in (
        {"distribution": "q_log_uniform_values", "min": 1, "max": 100, "q": 1},
        {"values": [1, 2], "probabilities": [0.3, 0.7]},
        {"distribution": "q_uniform", "min": 0.5, "max": 3.5, "q": 1},  # W&B's values: 1, 2, 3 (and 0, 4)
    ):
        with pytest.raises(ValueError, match="^problem odd, parameter p: "):
            optuna_distributions(Problem("odd", {"p": bad}, lambda c: 0.0, 0.0))


def test_w_and_b_random_draws_the_same_losses_for_the_same_seed_from_its_first_call() -> None:
    # In a fresh process: the engine's first call is the one that imported its modules.
    code = (
        "from bench.adapters import METHODS\n"
        "from bench.problems import all_problems\n"
        "branin = all_problems()[0]\n"
        "print(METHODS['wandb random'](branin, 3, 0) == METHODS['wandb random'](branin, 3, 0))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
