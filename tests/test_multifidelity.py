"""The multi-fidelity benchmark's own pieces: result file names, arguments and the oracle's floor."""

from __future__ import annotations

import math

import pytest

from bench.curves import problems
from bench.multifidelity import ORACLE, main, methods, resource_to_reach, results_stem, simulate


@pytest.mark.parametrize(
    ("quick", "seeds", "full_trials", "stem"),
    [
        (False, 10, 40, "multifidelity"),
        (False, 10, 120, "multifidelity-120trials"),
        (False, 40, 40, "multifidelity-40seeds"),
        (False, 40, 120, "multifidelity-120trials-40seeds"),
        (True, 2, 15, "multifidelity-quick"),
    ],
)
def test_each_budget_and_seed_count_has_its_own_result_files(
    quick: bool, seeds: int, full_trials: int, stem: str
) -> None:
    assert results_stem(quick, seeds, full_trials) == stem
    assert results_stem(quick, seeds, full_trials, workers=4) == f"{stem}-4workers"


@pytest.mark.parametrize("flag", ["--seeds", "--workers", "--full-trials"])
def test_counts_below_one_are_refused_before_anything_runs(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([flag, "0"])
    assert exited.value.code == 2
    assert f"{flag} must be at least 1, not 0" in capsys.readouterr().err


def test_the_oracle_finishes_only_trials_that_reach_the_target_and_pays_for_busy_workers() -> None:
    problem = problems()[0]
    budget = 20 * problem.max_epochs
    target = 0.05
    shares = {}
    for workers in (1, 8):
        trace = simulate(methods(problem, target)[ORACLE](0), problem, workers, budget, 0)
        assert trace.regret and all(r <= target for r in trace.regret)
        shares[workers] = resource_to_reach(trace, target) / budget
    # While the winner runs its full budget the 7 other workers spend about as much each.
    assert shares[8] - shares[1] >= 0.8 * 7 / 20
    assert math.isfinite(shares[1]) and shares[1] < 0.5
