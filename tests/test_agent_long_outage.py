"""A coordinator away for longer than an agent retries errors: a trial that ended meanwhile is
reported once it is back, by the agent that ran it, not left on disk while its lease runs out;
one that answers with errors is not waited for forever.

Real parts: a `sweeper server` subprocess, killed mid-trial and started again on the same
database, its HTTP client, and an agent running a real trial script.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from process_support import wait_until
from sweeper.agents.events import TrialAbandoned, TrialEnded

from sweeper.client import CoordinatorTimeoutError, CoordinatorUnavailableError
from sweeper.trials import TrialState

pytest.importorskip("fastapi")
from server_helpers import one_trial_agent, start_server  # noqa: E402

# Logs a point, then waits until the test has killed the coordinator, logs another and ends.
SCRIPT = """
import pathlib, time
import sweeper
run = sweeper.init({"x": 1})
here = pathlib.Path(str(run.dir))
run.log({"loss": 1.0}, step=0)
(here / "ready").write_text("1")
while not (here / "go").exists():
    time.sleep(0.05)
run.log({"loss": 0.5}, step=1)
"""

FINISH_TIMEOUT = 1.0  # seconds an end is retried while the coordinator answers with errors


def test_an_end_waits_for_a_coordinator_that_is_away_longer_than_the_retry_time(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    server = start_server(db, tmp_path / "server")
    events: list[object] = []
    try:
        sweep_id, agent = one_trial_agent(
            server,
            tmp_path,
            SCRIPT,
            name="outage-test",
            events=events,
            client_timeout=2.0,
            finish_timeout=FINISH_TIMEOUT,
        )
        runner = threading.Thread(target=agent.run, daemon=True)
        began = time.monotonic()
        runner.start()
        folder = tmp_path / ".sweeper" / "trials" / sweep_id / "1"
        assert wait_until(lambda: (folder / "ready").exists(), 60), "the script's first step"
        server.kill()
        (folder / "go").write_text("1")
        assert wait_until(lambda: (folder / "finish.json").exists(), 60), (
            "the script to end during the outage"
        )
        outage_began = time.monotonic()
        time.sleep(4 * FINISH_TIMEOUT)  # the agent gave its end up after FINISH_TIMEOUT, before
        assert runner.is_alive() and not [e for e in events if isinstance(e, TrialAbandoned | TrialEnded)]
        server = start_server(db, tmp_path / "server", port=server.port)
        runner.join(120)
        assert not runner.is_alive()
        (trial,) = server.client().trials(sweep_id, with_history=True)
    finally:
        server.stop()

    assert not [e for e in events if isinstance(e, TrialAbandoned)], events
    (ended,) = [e for e in events if isinstance(e, TrialEnded)]
    assert ended.outcome.state is TrialState.FINISHED
    assert ended.seconds < outage_began - began  # its own time: not the wait for the server
    assert trial.state is TrialState.FINISHED
    assert [(p.step, p.value) for p in trial.history or ()] == [(0, 1.0), (1, 0.5)]
    assert not (folder / "finish.json").exists()  # delivered: nothing left for another agent


class _Reporter:
    """What report_end uses of the trial's reporter: nothing left to send, and each failure's wait,
    which moves the clock on by a minute."""

    queue = None
    summary: dict[str, float] = {}

    def __init__(self, clock: list[float], backoff: float = 0.0) -> None:
        self.clock = clock
        self.backoff = backoff

    def send_all(self) -> None:
        pass

    def record_failure(self, exc: BaseException) -> float:
        self.clock[0] += 60.0
        return self.backoff


class _Ends:
    """A coordinator client whose end calls fail with ``errors``, one each, then succeed."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.finished = 0

    def finish_trial(self, trial_id: int, lease_id: str, outcome: object) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.finished += 1


@pytest.mark.parametrize(
    ("error", "delivered"),
    [
        (CoordinatorUnavailableError("coordinator unreachable: [Errno 111] Connection refused"), True),
        (CoordinatorTimeoutError("no answer within 10s"), True),
        (CoordinatorUnavailableError("502 Bad Gateway"), True),  # a proxy whose server is down
        (CoordinatorUnavailableError("500 Internal Server Error", answered=True), False),
    ],
)
def test_an_end_is_retried_while_nothing_answers_not_while_errors_do(
    error: Exception, delivered: bool
) -> None:
    from sweeper.agents.ending import report_end
    from sweeper.agents.trialrun import StopSignal

    from sweeper.protocol import Assignment, TrialOutcome

    clock = [0.0]
    client = _Ends([error] * 30)  # half an hour of failures, past the 10 minutes given to errors
    events: list[object] = []
    assignment = Assignment("s", 1, 1, "lease", 30.0, {}, ["python"], "t.py", None)
    report_end(
        client,  # type: ignore[arg-type]
        assignment,
        _Reporter(clock),  # type: ignore[arg-type]
        TrialOutcome(TrialState.FINISHED),
        started=0.0,
        clock=lambda: clock[0],
        timeout=None,
        stop=StopSignal(),
        emit=events.append,
    )
    kinds = [type(event) for event in events]
    assert kinds == ([TrialEnded] if delivered else [TrialAbandoned]), events
    assert client.finished == (1 if delivered else 0)


def test_a_stopping_agent_does_not_wait_out_the_backoff_an_outage_has_grown() -> None:
    """Slurm's SIGKILL follows its SIGTERM within 30 s: an end the coordinator cannot take gets a
    few quick tries, then stays on disk for the next agent."""
    from sweeper.agents.ending import report_end
    from sweeper.agents.trialrun import StopSignal

    from sweeper.protocol import Assignment, TrialOutcome

    class Pauses(StopSignal):
        def __init__(self) -> None:
            super().__init__()
            self.pauses: list[float] = []

        def pause(self, seconds: float) -> None:
            self.pauses.append(seconds)

    clock = [0.0]
    stop = Pauses()
    stop.request("interrupted (SIGTERM)")
    events: list[object] = []
    report_end(
        _Ends([CoordinatorUnavailableError("coordinator unreachable")] * 10),  # type: ignore[arg-type]
        Assignment("s", 1, 1, "lease", 30.0, {}, ["python"], "t.py", None),
        _Reporter(clock, backoff=20.0),  # type: ignore[arg-type]  # what minutes of outage grew it to
        TrialOutcome(TrialState.LOST, stop_reason="interrupted (SIGTERM)"),
        started=0.0,
        clock=lambda: clock[0],
        timeout=None,
        stop=stop,
        emit=events.append,
    )
    assert [type(event) for event in events] == [TrialAbandoned]
    assert stop.pauses == [1.0, 1.0], "two short pauses between three tries"
