"""Which published checkpoints of a population nothing can need any more.

Every trial of a ``method: pbt`` sweep publishes its own checkpoint, and each exploit starts a new
trial, so a long run leaves one checkpoint per exploit: for a large model, disk without end. A
checkpoint is kept while anything could still read it:

- its trial, while it runs;
- each member's newest trials, back to the second newest that has logged a value of the metric:
  the newest is the member's model (a donor for exploits and, at the end, a result); the one
  before may still stand for its member in an exploit decision judged at a point in time before
  the newest had logged anything (agents' clocks differ, and points sent late keep their time);
- any trial that restores from it, while that one runs, or failed or was lost as its member's
  newest trial (it may run again, from the same checkpoint);
- a donor chosen by an exploit whose replacement trial has not been created yet.

Everything else can go, so a population keeps about twice its size in checkpoints, plus those
that running trials start from. A pure function of the trial history: the coordinator
hands the result to agents, which can reach the checkpoint store.
"""

from __future__ import annotations

from collections.abc import Sequence

from sweeper.checkpoints import checkpoint_location
from sweeper.stopping.pbt import exploited_trial
from sweeper.trials import Trial, TrialState

_MAY_RUN_AGAIN = frozenset({TrialState.FAILED, TrialState.LOST})
_STANDING_KEPT = 2  # per member: trials with a value that may still stand for it


def unneeded_checkpoints(trials: Sequence[Trial], root: str, metric: str) -> list[str]:
    """Locations under ``root`` of the checkpoints of ``trials`` that nothing can read any more,
    oldest trial first."""
    by_member: dict[int, list[Trial]] = {}
    for trial in trials:
        if trial.member is not None:
            by_member.setdefault(trial.member, []).append(trial)
    needed: set[str] = set()
    newest: set[int] = set()  # numbers of each member's newest trials
    for members in by_member.values():
        members.sort(key=lambda t: t.number)
        standing = 0
        for trial in reversed(members):
            needed.add(checkpoint_location(root, trial.sweep_id, trial.number))
            standing += metric in trial.summary
            if standing == _STANDING_KEPT:
                break
        latest = members[-1]
        newest.add(latest.number)
        if (donor := exploited_trial(latest.stop_requested or latest.stop_reason)) is not None:
            needed.add(checkpoint_location(root, latest.sweep_id, donor))  # its replacement comes next
    for trial in trials:
        if trial.restore_from is None:
            continue
        if trial.state.is_active or (trial.state in _MAY_RUN_AGAIN and trial.number in newest):
            needed.add(trial.restore_from)
    unneeded = []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.member is None or trial.state.is_active:
            continue
        location = checkpoint_location(root, trial.sweep_id, trial.number)
        if location not in needed:
            unneeded.append(location)
    return unneeded
