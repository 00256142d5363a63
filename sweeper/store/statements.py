"""The statements of the agent protocol's calls, built once: building them costs more than running them."""

from __future__ import annotations

from sqlalchemy import bindparam, func, insert, select, update

from sweeper.store.schema import sweeps, trials
from sweeper.trials import TrialState

SWEEP = select(sweeps).where(sweeps.c.id == bindparam("sweep_id_"))
SWEEP_LOCKED = SWEEP.with_for_update()
INSERT_TRIAL = insert(trials).returning(trials.c.id)  # inserts the columns it is run with
TRIAL = select(trials).where(trials.c.id == bindparam("trial_id_"))
TRIAL_LOCKED = TRIAL.with_for_update()
# Sets the columns named by the parameters it is run with (all but trial_id_).
UPDATE_TRIAL = update(trials).where(trials.c.id == bindparam("trial_id_"))
RUNNING_IN_SWEEP = (
    select(func.count())
    .select_from(trials)
    .where(trials.c.sweep_id == bindparam("sweep_id_"), trials.c.state == TrialState.RUNNING.value)
)
