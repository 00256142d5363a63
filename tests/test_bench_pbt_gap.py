"""The PBT and agent-gap benchmarks: where their results go, and the arguments they refuse before
running."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import agent_gap  # noqa: E402

from bench import pbt  # noqa: E402


def test_only_the_reported_runs_write_the_committed_result_files() -> None:
    assert pbt.results_stem(10, 8) == "pbt"
    assert pbt.results_stem(3, 8) == "pbt-3seeds"
    assert pbt.results_stem(10, 4) == "pbt-population4"
    assert agent_gap.results_stem("grid", 30) == "agent_gap"
    assert agent_gap.results_stem("bayes", 30) == "agent_gap_bayes"
    assert agent_gap.results_stem("bayes", 5) == "agent_gap_bayes-5trials"


@pytest.mark.parametrize(
    ("main", "args", "expected"),
    [
        (pbt.main, ["--seeds", "0"], "--seeds must be at least 1, not 0"),
        (pbt.main, ["--population", "1"], "--population must be at least 2, not 1"),
        (agent_gap.main, ["--trials", "1"], "--trials must be at least 2, not 1"),
    ],
)
def test_counts_that_cannot_run_are_refused_before_anything_runs(
    main: Callable[[list[str]], None], args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert expected in capsys.readouterr().err
