"""Which published checkpoints of a population nothing can need any more.

Every trial of a ``method: pbt`` sweep publishes its own checkpoint, and each exploit starts a new
trial, so a long run leaves one checkpoint per exploit: for a large model, disk without end. A
checkpoint is kept while anything could still read it:

- its trial, while it runs;
- each member's newest trials, back to the ``STANDING_TRIALS``-th newest with a finite value of
  the metric: only those can be a donor in an exploit decision (:mod:`sweeper.stopping.pbt`),
  and the newest is the member's model;
- the checkpoint a running trial started from, and the donor of an exploit whose new trial is
  not created yet;
- the checkpoints a running retry resumes from (:func:`resume_points`);
- whatever the caller names besides (the coordinator: what failed or lost trials would start
  from again, and the sweep's best trial).

A trial that is not kept now is never needed again: its member only gets newer trials, and
nothing new restores from it. So a population keeps about twice its size in checkpoints,
however long it runs. A pure function of the trial history: the coordinator hands the result to
agents, which can reach the checkpoint store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from sweeper.checkpoints import checkpoint_location
from sweeper.stopping.pbt import STANDING_TRIALS, exploited_trial
from sweeper.trials import Trial, TrialState


def resume_points(root: str, by_number: Mapping[int, Trial], number: int | None) -> list[str]:
    """Where trial ``number`` and the attempts of its configuration before it published their
    checkpoints, newest first, as long as each was lost (its agent died, or was interrupted): the
    retry of a lost attempt resumes from the newest of these that exists, not from where the first
    attempt started. A failed attempt ends the walk: its crash may lie in what it had trained."""
    points = []
    while number is not None and (trial := by_number.get(number)) is not None:
        if trial.state is not TrialState.LOST:
            break
        points.append(checkpoint_location(root, trial.sweep_id, trial.number))
        number = trial.retry_of
    return points


def unneeded_checkpoints(
    trials: Sequence[Trial], root: str, metric: str, *, needed: Iterable[str] = ()
) -> list[str]:
    """Locations under ``root`` of the checkpoints of ``trials`` that nothing can read any more,
    oldest trial first. ``needed``: locations to keep besides."""
    by_member: dict[int, list[Trial]] = {}
    for trial in trials:
        if trial.member is not None:
            by_member.setdefault(trial.member, []).append(trial)
    kept = set(needed)
    for members in by_member.values():
        members.sort(key=lambda t: t.number)
        standing = 0
        for trial in reversed(members):
            kept.add(checkpoint_location(root, trial.sweep_id, trial.number))
            # A finite last value means the ranking counts the trial (it ignores NaN and inf);
            # one that logged finite values before a NaN is kept for longer, which is harmless.
            standing += math.isfinite(trial.summary.get(metric, math.nan))
            if standing == STANDING_TRIALS:
                break
        latest = members[-1]
        if (donor := exploited_trial(latest.stop_requested or latest.stop_reason)) is not None:
            kept.add(checkpoint_location(root, latest.sweep_id, donor))  # its new trial comes next
    kept.update(t.restore_from for t in trials if t.restore_from is not None and t.state.is_active)
    retrying = [t for t in trials if t.retry_of is not None and t.state.is_active]
    if retrying:
        by_number = {t.number: t for t in trials}
        for trial in retrying:
            kept.update(resume_points(root, by_number, trial.retry_of))
    unneeded = []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.member is None or trial.state.is_active:
            continue
        location = checkpoint_location(root, trial.sweep_id, trial.number)
        if location not in kept:
            unneeded.append(location)
    return unneeded
