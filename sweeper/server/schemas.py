"""Request and response bodies of the HTTP API, and their conversion to sweeper's records.

Everything a client sends is checked here (lengths, characters, integer ranges), so a
mistake gets a 422 naming the field instead of reaching the store. Non-finite metric
values travel as the strings "NaN", "Infinity" and "-Infinity": JSON has no such numbers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, model_validator

from sweeper.client import decode_float, encode_float
from sweeper.protocol import (
    MAX_METRIC_NAME,
    AgentInfo,
    Assignment,
    Directive,
    NoTrial,
    NoTrialReason,
    is_interrupted,
    metric_name_problem,
)
from sweeper.spec.storable import INT64_MAX, INT64_MIN, text_problem
from sweeper.trials import MetricPoint, Sweep, SweepState, Trial, TrialState

# Trial ids and numbers: the store's columns are 32-bit integers on PostgreSQL (beyond, a 500).
INT32_MAX = 2**31 - 1
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # sweep ids and lease ids
MAX_NAME = MAX_METRIC_NAME
MAX_TAIL = 65536


def _storable(value: str) -> str:
    # A lone surrogate cannot be encoded, and PostgreSQL text cannot hold NUL: refuse both here.
    if (problem := text_problem(value)) is not None:
        raise ValueError(problem)
    return value


def _free_text(value: str) -> str:
    # stderr may hold NUL bytes; keep the rest of it rather than refuse the report.
    return _storable(value.replace("\x00", "\ufffd"))


def _interruption(value: str) -> str:
    if not is_interrupted(value):
        raise ValueError("an interruption reads 'interrupted (WHAT)'")
    return _free_text(value)


# A name people and tools read: printable, no control characters.
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME, pattern=_PRINTABLE), AfterValidator(_storable)]


def _metric_name(value: str) -> str:
    if (problem := metric_name_problem(value)) is not None:
        raise ValueError(problem)
    return value


# The coordinator's own rule for metric names (the embedded one applies the same).
MetricName = Annotated[str, AfterValidator(_metric_name)]
LeaseId = Annotated[str, Field(pattern=ID_PATTERN)]
# Chosen by the agent, it becomes the lease's id: long enough that no two agents choose alike.
RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
NonFinite = Literal["NaN", "Infinity", "-Infinity"]
MetricValue = StrictFloat | NonFinite  # strict: the string "nan" must not pass as a number
FreeText = Annotated[str, Field(max_length=MAX_TAIL), AfterValidator(_free_text)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors -------------------------------------------------------------------


class ProblemOut(Model):
    path: str
    message: str


class ErrorOut(Model):
    code: str
    detail: str
    problems: list[ProblemOut] | None = None


# --- sweeps -------------------------------------------------------------------


class SweepOut(Model):
    id: str
    name: str | None
    method: str
    state: SweepState
    spec: dict[str, Any]
    seed: int
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, sweep: Sweep) -> SweepOut:
        return cls(
            id=sweep.id,
            name=sweep.name,
            method=sweep.method,
            state=sweep.state,
            spec=dict(sweep.spec),
            seed=sweep.seed,
            created_at=sweep.created_at,
            updated_at=sweep.updated_at,
        )


class SweepStateIn(Model):
    state: SweepState


# --- trials -------------------------------------------------------------------


class PointIn(Model):
    name: MetricName
    value: MetricValue
    step: Int64
    seq: Int64
    time: FiniteFloat

    def point(self) -> MetricPoint:
        return MetricPoint(
            name=self.name, value=decode_float(self.value), step=self.step, seq=self.seq, time=self.time
        )


class PointOut(Model):
    name: str
    value: MetricValue
    step: int
    seq: int
    time: float


class TrialOut(Model):
    id: int
    sweep_id: str
    number: int
    config: dict[str, Any]
    state: TrialState
    created_at: float
    ended_at: float | None
    retry_of: int | None
    member: int | None = None
    restore_from: str | None = None
    agent: str | None
    host: str | None
    lease_id: str | None
    lease_expires_at: float | None
    exit_code: int | None
    stderr_tail: str | None
    stop_reason: str | None
    stop_requested: str | None
    summary: dict[str, MetricValue]
    history: list[PointOut] | None

    @classmethod
    def of(cls, trial: Trial) -> TrialOut:
        history = None
        if trial.history is not None:
            history = [
                PointOut(name=p.name, value=encode_float(p.value), step=p.step, seq=p.seq, time=p.time)
                for p in trial.history
            ]
        return cls(
            id=trial.id,
            sweep_id=trial.sweep_id,
            number=trial.number,
            config=dict(trial.config),
            state=trial.state,
            created_at=trial.created_at,
            ended_at=trial.ended_at,
            retry_of=trial.retry_of,
            member=trial.member,
            restore_from=trial.restore_from,
            agent=trial.agent,
            host=trial.host,
            lease_id=trial.lease_id,
            lease_expires_at=trial.lease_expires_at,
            exit_code=trial.exit_code,
            stderr_tail=trial.stderr_tail,
            stop_reason=trial.stop_reason,
            stop_requested=trial.stop_requested,
            summary={k: encode_float(v) for k, v in trial.summary.items()},
            history=history,
        )


# --- the agent protocol -------------------------------------------------------


# An agent slot's CUDA_VISIBLE_DEVICES: a trial of 8 GPUs named by UUID is over 300 characters.
Devices = Annotated[str, Field(min_length=1, max_length=4096, pattern=_PRINTABLE)]


class AgentIn(Model):
    name: Name
    host: Name
    gpu: Devices | None = None
    # Asking again after an answer was lost: the same request_id with resent true gets the trial
    # that the first ask leased, not a second one.
    request_id: RequestId | None = None
    resent: bool = False
    # False: only the trial an ask with request_id leased, never a new one. A stopping agent asks
    # so, to end a trial whose answer never reached it (it would otherwise run out its lease, lost).
    new_lease: bool = True

    @model_validator(mode="after")
    def _names_its_ask(self) -> AgentIn:
        if not self.new_lease and self.request_id is None:
            raise ValueError(
                "new_lease false asks for the trial an earlier ask leased: name that ask's request_id"
            )
        return self

    def info(self) -> AgentInfo:
        return AgentInfo(name=self.name, host=self.host, gpu=self.gpu)

    def ask(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`Coordinator.next_trial` besides the agent."""
        return {"request_id": self.request_id, "resent": self.resent, "new_lease": self.new_lease}


class AssignmentOut(Model):
    sweep_id: str
    trial_id: int
    trial_number: int
    lease_id: str
    lease_seconds: float
    config: dict[str, Any]
    command: list[str]
    program: str | None
    metric_name: str | None
    integrations: dict[str, Any] | None = None  # the sweep's tracker settings, for the agent's adapters
    restore_from: str | None = None  # the checkpoint the trial starts from (method pbt)
    checkpoint_to: str | None = None  # where the trial's checkpoint folder is published
    retry_of: int | None = None  # the trial whose configuration this one runs again
    resume_from: list[str] = []  # a retry's lost attempts' checkpoints, newest first
    discard_checkpoints: list[str] = []  # the sweep's checkpoints nothing restores from any more
    project: str | None = None  # the sweep file's W&B project and entity
    entity: str | None = None
    time_limit: float | None = None  # seconds the trial may run (sweeper.trial_timeout)
    stall_limit: float | None = None  # seconds it may go without logging or printing (sweeper.stall_timeout)


class NoTrialOut(Model):
    reason: NoTrialReason
    message: str
    retry_after: float


class NextTrialOut(Model):
    """Exactly one of ``assignment`` and ``no_trial`` is set."""

    assignment: AssignmentOut | None = None
    no_trial: NoTrialOut | None = None

    @classmethod
    def of(cls, answer: Assignment | NoTrial) -> NextTrialOut:
        if isinstance(answer, NoTrial):
            return cls(
                no_trial=NoTrialOut(
                    reason=answer.reason, message=answer.message, retry_after=answer.retry_after
                )
            )
        return cls(
            assignment=AssignmentOut(
                sweep_id=answer.sweep_id,
                trial_id=answer.trial_id,
                trial_number=answer.trial_number,
                lease_id=answer.lease_id,
                lease_seconds=answer.lease_seconds,
                config=dict(answer.config),
                command=list(answer.command),
                program=answer.program,
                metric_name=answer.metric_name,
                integrations=dict(answer.integrations) if answer.integrations else None,
                restore_from=answer.restore_from,
                checkpoint_to=answer.checkpoint_to,
                retry_of=answer.retry_of,
                resume_from=list(answer.resume_from),
                discard_checkpoints=list(answer.discard_checkpoints),
                project=answer.project,
                entity=answer.entity,
                time_limit=answer.time_limit,
                stall_limit=answer.stall_limit,
            )
        )


class LeaseIn(Model):
    lease_id: LeaseId
    # The agent was told to stop (a signal) and is ending the trial: if the agent is killed
    # before it reports the end, the trial is lost as interrupted and its retry is not spent.
    interrupted: Annotated[str, Field(max_length=200), AfterValidator(_interruption)] | None = None


class MetricsIn(Model):
    lease_id: LeaseId
    points: list[PointIn]


class FinishIn(Model):
    lease_id: LeaseId
    # lost: the agent was told to stop (a signal) and cut the trial short; it runs again
    state: Literal[TrialState.FINISHED, TrialState.FAILED, TrialState.STOPPED, TrialState.LOST]
    exit_code: Annotated[int, Field(ge=-(2**31), le=2**31 - 1)] | None = None
    stderr_tail: FreeText | None = None
    stop_reason: Annotated[str, Field(max_length=4096), AfterValidator(_free_text)] | None = None


class DirectiveOut(Model):
    stop: bool
    reason: str | None = None

    @classmethod
    def of(cls, directive: Directive) -> DirectiveOut:
        return cls(stop=directive.stop, reason=directive.reason)


class HealthOut(Model):
    status: Literal["ok"]
    version: str
