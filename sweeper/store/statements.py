"""The statements of the agent protocol's calls, built and compiled once (:mod:`sweeper.store.prepared`):
building them costs more than running them."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, any_, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql

from sweeper.store.bulk import Bulk
from sweeper.store.prepared import Prepared
from sweeper.store.schema import sweeps, trials
from sweeper.trials import TrialState

_SWEEP = select(sweeps).where(sweeps.c.id == bindparam("sweep_id_"))
SWEEP = Prepared(_SWEEP)
SWEEP_LOCKED = Prepared(_SWEEP.with_for_update())
INSERT_TRIAL = Prepared(insert(trials).returning(trials.c.id))  # inserts the columns it is run with
# The same, its id given: nothing to wait for, and on PostgreSQL the inserts of several leases go as one.
INSERT_TRIAL_WITH_ID = Prepared(insert(trials), bulk=Bulk.insert(trials, key="id"))
# PostgreSQL: the ids the next n_ trials take from the trials' id sequence, read with a lease's
# other reads, so that their inserts can go to the server with the next statement instead of on
# their own.
NEXT_TRIAL_IDS = Prepared(
    select(func.nextval(func.pg_get_serial_sequence("trials", "id"), type_=BigInteger)).select_from(
        func.generate_series(1, bindparam("n_", type_=Integer))
    )
)
_TRIAL = select(trials).where(trials.c.id == bindparam("trial_id_"))
TRIAL = Prepared(_TRIAL)
TRIAL_LOCKED = Prepared(_TRIAL.with_for_update())
_IDS = bindparam("ids_", type_=postgresql.ARRAY(Integer))  # PostgreSQL: several trials' ids
# The trials with the ids ids_, locked in id order (the order every lock of several trials takes,
# so two batches that lock some of the same trials never deadlock).
TRIALS_LOCKED = Prepared(
    select(trials).where(trials.c.id == any_(_IDS)).order_by(trials.c.id).with_for_update()
)
# Sets the columns named by the parameters it is run with (all but trial_id_). Sent without
# waiting on PostgreSQL, the updates of several trials that set the same columns go as one.
UPDATE_TRIAL = Prepared(
    update(trials).where(trials.c.id == bindparam("trial_id_")), bulk=Bulk.update(trials, key="trial_id_")
)
_THIS = trials.alias("this")
# How many trials of the sweep of trial trial_id_ are running.
RUNNING_IN_SWEEP_OF_TRIAL = Prepared(
    select(func.count())
    .select_from(trials)
    .where(
        trials.c.sweep_id
        == select(_THIS.c.sweep_id).where(_THIS.c.id == bindparam("trial_id_")).scalar_subquery(),
        trials.c.state == TrialState.RUNNING.value,
    )
)
# For each trial with one of the ids ids_: its sweep, and how many of the sweep's trials are
# running (a count per trial, each down the (sweep_id, state) index: a join of all of them let
# the planner scan every running row version the sweep's updates left behind).
RUNNING_IN_SWEEPS_OF_TRIALS = Prepared(
    select(
        _THIS.c.sweep_id,
        select(func.count())
        .where(trials.c.sweep_id == _THIS.c.sweep_id, trials.c.state == TrialState.RUNNING.value)
        .scalar_subquery(),
    ).where(_THIS.c.id == any_(_IDS))
)
