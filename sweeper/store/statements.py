"""The statements of the agent protocol's calls, built and compiled once (:mod:`sweeper.store.prepared`):
building them costs more than running them."""

from __future__ import annotations

from sqlalchemy import bindparam, func, insert, select, update

from sweeper.store.prepared import Prepared
from sweeper.store.schema import sweeps, trials
from sweeper.trials import TrialState

_SWEEP = select(sweeps).where(sweeps.c.id == bindparam("sweep_id_"))
SWEEP = Prepared(_SWEEP)
SWEEP_LOCKED = Prepared(_SWEEP.with_for_update())
INSERT_TRIAL = Prepared(insert(trials).returning(trials.c.id))  # inserts the columns it is run with
_TRIAL = select(trials).where(trials.c.id == bindparam("trial_id_"))
TRIAL = Prepared(_TRIAL)
TRIAL_LOCKED = Prepared(_TRIAL.with_for_update())
# Sets the columns named by the parameters it is run with (all but trial_id_).
UPDATE_TRIAL = Prepared(update(trials).where(trials.c.id == bindparam("trial_id_")))
_OTHER = trials.alias("other")
# The trial, locked, with the number of running trials of its sweep (running_in_sweep_).
TRIAL_LOCKED_WITH_RUNNING = Prepared(
    select(
        trials,
        select(func.count())
        .select_from(_OTHER)
        .where(_OTHER.c.sweep_id == trials.c.sweep_id, _OTHER.c.state == TrialState.RUNNING.value)
        .scalar_subquery()
        .label("running_in_sweep_"),
    )
    .where(trials.c.id == bindparam("trial_id_"))
    .with_for_update()
)
