"""``python -m bench.search --problems-from FILE``: problems of one's own beside the built-in ones."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
