"""An agent gives up after too many trials in a row failed: a broken script, a missing package or
a machine whose GPU is gone would otherwise burn through the whole sweep, one failure at a time."""

from __future__ import annotations

from sweeper.agents.stderr import telling_line

from sweeper.protocol import TrialOutcome
from sweeper.trials import TrialState

#: Trials in a row that may fail before an agent stops. W&B's agent counts differently: 3 failed runs
#: in its first 60 s, or 5 or more failed with at most one success before (see the README).
DEFAULT_MAX_FAILURES = 3
GIVE_UP_ADVICE = (
    "this agent stops. Fix the script, 'sweeper resume' the sweep (the configurations that failed run "
    "again) and start the agent again, or pass --max-failures 0 (max_failures=0 in Python) to keep going"
)


class FailureStreak:
    """Counts failed trials since the last one that did not fail; ``limit`` 0 never gives up."""

    def __init__(self, limit: int = DEFAULT_MAX_FAILURES) -> None:
        if limit < 0:
            raise ValueError(f"the failure limit must be 0 (never stop) or more, got {limit}")
        self.limit = limit
        self.count = 0

    def record(self, trial_number: int, outcome: TrialOutcome) -> str | None:
        """Count ``outcome``; when it is one failure too many, the line the agent stops with."""
        if outcome.state is not TrialState.FAILED:
            if outcome.state is not TrialState.LOST:  # a lost trial says nothing about the script
                self.count = 0
            return None
        self.count += 1
        if not self.limit or self.count < self.limit:
            return None
        last = telling_line(outcome.stderr_tail) or "no error message on stderr"
        if self.count == 1:  # --max-failures 1
            facts = f"trial {trial_number} failed ({last})"
        else:
            facts = f"{self.count} trials in a row failed (the last, trial {trial_number}: {last})"
        return f"{facts}; {GIVE_UP_ADVICE}"
