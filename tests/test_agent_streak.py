"""An agent's count of failed trials in a row, and when it gives up."""

from __future__ import annotations

from pathlib import Path

import pytest
from sweeper.agents.streak import FailureStreak

from sweeper.protocol import TrialOutcome
from sweeper.trials import TrialState

FAILED = TrialOutcome(TrialState.FAILED, exit_code=1, stderr_tail="Traceback ...\nValueError: bad lr")


def test_the_third_failure_in_a_row_gives_up_with_the_last_error() -> None:
    streak = FailureStreak(3)
    assert streak.record(1, FAILED) is None and streak.record(2, FAILED) is None
    line = streak.record(3, FAILED)
    assert line is not None and line.startswith(
        "3 trials in a row failed (the last, trial 3: ValueError: bad lr)"
    )


def test_a_limit_of_one_names_the_trial_in_the_singular() -> None:
    line = FailureStreak(1).record(7, FAILED)
    assert line is not None and line.startswith("trial 7 failed (ValueError: bad lr); "), line


@pytest.mark.parametrize(
    ("between", "gives_up"),
    [
        (TrialState.FINISHED, False),  # the script works: start counting again
        (TrialState.STOPPED, False),  # stopped early on purpose: it ran fine until then
        (TrialState.LOST, True),  # its agent lost the lease: nothing learnt about the script
    ],
)
def test_only_a_trial_that_did_not_fail_breaks_the_streak(between: TrialState, gives_up: bool) -> None:
    streak = FailureStreak(2)
    streak.record(1, FAILED)
    streak.record(2, TrialOutcome(between))
    assert (streak.record(3, FAILED) is not None) is gives_up


def test_a_limit_of_zero_never_gives_up_and_a_negative_one_is_refused() -> None:
    streak = FailureStreak(0)
    assert all(streak.record(n, FAILED) is None for n in range(1, 50))
    assert streak.record(50, TrialOutcome(TrialState.FAILED)) is None
    with pytest.raises(ValueError, match="0 \\(never stop\\) or more, got -1"):
        FailureStreak(-1)


def test_the_readme_states_wandb_agents_own_rule() -> None:
    """The README sets this rule beside W&B's agent's, which is not a streak; its numbers are W&B's."""
    agent = pytest.importorskip("wandb.wandb_agent").Agent
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "W&B's agent does the same" not in readme
    first = agent.FLAPPING_MAX_FAILURES, agent.FLAPPING_MAX_SECONDS
    assert "it stops when {} runs fail within its first {} seconds".format(*first) in readme
    assert (
        f"once at least {agent.MAX_INITIAL_FAILURES} have failed and no more than one run before it" in readme
    )
    assert "--max-consecutive-failed-runs N" in readme

    def gives_up(successes_first: int) -> bool:
        # W&B's run loop, past its first minute: a failure counts, is judged, then counts as ended.
        w = agent.__new__(agent)
        w._max_initial_failures, w._failed, w._finished = agent.MAX_INITIAL_FAILURES, 0, successes_first
        for _ in range(100):
            w._failed += 1
            if w.is_failing():
                return True
            w._finished += 1
        return False

    assert gives_up(0) and gives_up(1) and not gives_up(2)
