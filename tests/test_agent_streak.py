"""An agent's count of failed trials in a row, and when it gives up."""

from __future__ import annotations

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
