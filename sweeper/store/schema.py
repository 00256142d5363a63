"""The tables, as SQLAlchemy Core describes them (the latest schema version).

JSON values (specs, configs, summaries) are stored as text written by ``json.dumps``:
PostgreSQL's JSON types reject NaN and infinity, which metric summaries must keep.
Times are epoch seconds as doubles, passed in by callers.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# Holds the schema version; created before any migration step runs.
meta = Table(
    "sweeper_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

sweeps = Table(
    "sweeps",
    metadata,
    Column("id", String(8), primary_key=True),
    Column("name", Text),
    Column("method", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("spec", Text, nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
)

trials = Table(
    "trials",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sweep_id", String(8), ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("config", Text, nullable=False),
    Column("config_key", Text, nullable=False),
    Column("retry_of", Integer),
    Column("agent", Text),
    Column("host", Text),
    Column("lease_id", Text),
    Column("lease_expires_at", Double),
    Column("created_at", Double, nullable=False),
    Column("ended_at", Double),
    Column("exit_code", Integer),
    Column("stderr_tail", Text),
    Column("stop_reason", Text),
    Column("stop_requested", Text),
    Column("summary", Text, nullable=False),
    # Version 2: the population slot and the checkpoint a trial starts from (method pbt).
    Column("member", Integer),
    Column("restore_from", Text),
    UniqueConstraint("sweep_id", "number", name="uq_trials_sweep_number"),
    # expire_leases scans running trials by expiry.
    Index("ix_trials_state_lease", "state", "lease_expires_at"),
)

# Version 3: a sweep's trials in one state (finishing a trial counts those still running),
# found without reading every trial the sweep has had.
trials_by_sweep_state = Index("ix_trials_sweep_state", trials.c.sweep_id, trials.c.state)

metrics = Table(
    "metrics",
    metadata,
    Column("trial_id", Integer, ForeignKey("trials.id", ondelete="CASCADE"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("name", Text, nullable=False),
    Column("step", BigInteger, nullable=False),
    # Nullable because SQLite stores NaN as NULL; readers turn NULL back into NaN.
    Column("value", Double),
    Column("time", Double, nullable=False),
    # A batch sent twice counts once.
    PrimaryKeyConstraint("trial_id", "seq", "name", name="pk_metrics"),
    # Serves a trial's history and the latest point of one metric (summary updates).
    Index("ix_metrics_curve", "trial_id", "name", "step", "seq"),
)

# What version 1 of the schema creates, in dependency order (as the tables stand now).
V1_TABLES = (sweeps, trials, metrics)

# Columns version 2 added to the trials table.
V2_TRIAL_COLUMNS = ("member", "restore_from")

# The index version 3 removed: no query looks trials up by configuration, and without
# statistics SQLite's planner took it for any lookup by sweep, reading every trial of the sweep.
V3_DROPPED_INDEX = "ix_trials_config_key"
