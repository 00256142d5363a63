"""A coordinator that slept or was stopped longer than a lease keeps the trials its agents kept running.

The watch is read with clocks set by hand; the coordinator end to end is a real process stopped
with SIGSTOP while its agent's trial goes on in a process of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from process_support import wait_until

from sweeper.coordinator import Coordinator
from sweeper.pauses import Pauses, PauseWatch
from sweeper.protocol import CONTINUE, AgentInfo, Assignment, LeaseLostError
from sweeper.spec import parse_sweep
from sweeper.store import open_store
from sweeper.trials import TrialState

SCRIPTS = Path(__file__).parent / "scripts"
AGENT = AgentInfo(name="agent-1", host="here")


class Clocks:
    """A wall clock and a monotonic one, moved by hand."""

    def __init__(self) -> None:
        self.wall = 1_000.0
        self.monotonic = 50.0

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.monotonic += seconds

    def sleep(self, seconds: float) -> None:  # the machine suspended: the monotonic clock stands still
        if self.watch is not None:
            self.watch.look()  # as its thread does every 0.25 s: the last look before the machine slept
        self.wall += seconds

    watch: PauseWatch | None = None


def watch_of(clocks: Clocks, *, watching: bool = False) -> PauseWatch:
    clocks.watch = PauseWatch(wall=lambda: clocks.wall, monotonic=lambda: clocks.monotonic, watching=watching)
    return clocks.watch


def test_the_watch_tells_sleep_by_the_wall_clock_going_on_alone() -> None:
    clocks = Clocks()
    watch = watch_of(clocks)
    clocks.run(100.0)  # a process that merely waited is not paused
    assert watch.since(0) == Pauses(0.0, None, 0)
    clocks.run(1.0)
    clocks.sleep(42.0)  # from wall time 1101
    clocks.run(1.0)
    first = watch.since(0)
    assert first == Pauses(pytest.approx(42.0), 1101.0, 1)
    assert watch.since(first.seen) == Pauses(
        0.0, None, 1
    )  # each pause is told once to a reader that passes its number
    clocks.sleep(7.0)
    assert watch.since(0) == Pauses(
        pytest.approx(42.0), 1101.0, 2
    )  # a reader that saw neither: the longest, the earliest
    assert watch.since(1) == Pauses(pytest.approx(7.0), 1144.0, 2)


def test_the_watch_tells_a_stopped_process_by_its_thread_not_getting_to_look() -> None:
    clocks = Clocks()
    watch = watch_of(clocks, watching=True)
    try:
        clocks.run(30.0)  # before anyone asks, no thread watches: a gap is no stop
        assert watch.since(0) == Pauses(0.0, None, 0)  # now its thread looks every 0.25 s
        clocks.run(0.2)
        assert watch.since(0) == Pauses(0.0, None, 0)
        clocks.run(9.0)  # both clocks went on, and nobody looked: the process did not run
        assert watch.since(0) == Pauses(pytest.approx(9.0 - 0.25), 1030.2, 1)
    finally:
        watch.stop()


def lease_reaches(coordinator: Coordinator, assignment: Assignment, end: float) -> bool:
    """Whether the trial's lease comes to end at ``end`` or later, within a few seconds."""

    def reached() -> bool:
        trial = next(t for t in coordinator.trials(assignment.sweep_id) if t.id == assignment.trial_id)
        return trial.lease_expires_at is not None and trial.lease_expires_at >= end

    return wait_until(reached, timeout=10)


def leased(coordinator: Coordinator) -> Assignment:
    raw = {"method": "grid", "program": "train.py", "parameters": {"x": {"values": [1, 2]}}}
    sweep = coordinator.create_sweep(parse_sweep(raw))
    assignment = coordinator.next_trial(sweep.id, AGENT)
    assert isinstance(assignment, Assignment)
    return assignment


def coordinator_on(tmp_path: Path, clocks: Clocks) -> Coordinator:
    store = open_store(f"sqlite:///{tmp_path / 'sweeper.db'}")
    return Coordinator(store, clock=lambda: clocks.wall, lease_seconds=30.0, pauses=watch_of(clocks))


def test_a_lease_that_ran_out_while_the_coordinator_slept_is_held_again(tmp_path: Path) -> None:
    clocks = Clocks()
    with coordinator_on(tmp_path, clocks) as coordinator:
        assignment = leased(coordinator)
        clocks.sleep(100.0)  # the laptop's lid closed with the lease 30 s long
        coordinator.expire_leases()  # the first pass after waking loses nothing
        assert coordinator.heartbeat(assignment.trial_id, assignment.lease_id) == CONTINUE
        assert lease_reaches(coordinator, assignment, clocks.wall + 30.0)  # given on a thread of its own
        [trial] = coordinator.trials(assignment.sweep_id)
        assert trial.state is TrialState.RUNNING
        clocks.run(31.0)  # the agent went silent after all: its trial is lost a lease later
        coordinator.expire_leases()
        assert [t.state for t in coordinator.trials(assignment.sweep_id)] == [TrialState.LOST]


def test_a_lease_that_ran_out_before_the_coordinator_slept_stays_run_out(tmp_path: Path) -> None:
    clocks = Clocks()
    with coordinator_on(tmp_path, clocks) as coordinator:
        assignment = leased(coordinator)
        clocks.run(40.0)  # the agent died; no one has looked since its lease ran out
        clocks.sleep(100.0)
        coordinator.expire_leases()
        assert [t.state for t in coordinator.trials(assignment.sweep_id)] == [TrialState.LOST]


def test_a_lease_made_across_a_pause_gets_its_time_after_the_others_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The time of a new lease is read, the machine sleeps, another thread's decision gives the
    # leases it finds their time (and looks for lost ones), and then the new lease is written.
    clocks = Clocks()
    with coordinator_on(tmp_path, clocks) as coordinator:
        running = leased(coordinator)
        new_trial = coordinator.store.new_trial

        def slept_midway(*args: Any, **kwargs: Any) -> Any:
            clocks.sleep(100.0)
            coordinator.expire_leases()  # the other thread, which has the running lease given its time
            assert lease_reaches(coordinator, running, clocks.wall + 30.0)
            return new_trial(*args, **kwargs)

        monkeypatch.setattr(coordinator.store, "new_trial", slept_midway)
        assignment = coordinator.next_trial(running.sweep_id, AGENT)
        assert isinstance(assignment, Assignment)
        coordinator.expire_leases()
        assert coordinator.heartbeat(assignment.trial_id, assignment.lease_id) == CONTINUE


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_store_url"))


def test_a_pause_noticed_while_another_thread_holds_a_batch_holds_up_neither(store_url: str) -> None:
    # The server runs agents' calls in batches, one transaction each. The leases' time after a
    # pause is written beside them: the batch, holding a trial's row, goes on, and so does the write.
    clocks = Clocks()
    store = open_store(store_url)
    coordinator = Coordinator(store, clock=lambda: clocks.wall, lease_seconds=30.0, pauses=watch_of(clocks))
    raw = {"method": "grid", "program": "train.py", "parameters": {"x": {"values": [1, 2]}}}
    sweep_id = coordinator.create_sweep(parse_sweep(raw)).id
    first, second = (coordinator.next_trial(sweep_id, AGENT) for _ in range(2))
    assert isinstance(first, Assignment) and isinstance(second, Assignment)
    holding, noticed, directives, errors = threading.Event(), threading.Event(), [], []

    def batch() -> None:
        with store.batch():
            directives.append(coordinator.heartbeat(first.trial_id, first.lease_id))  # its row, held
            holding.set()
            noticed.wait(10)
            time.sleep(0.3)  # the write of the leases' time is under way, waiting for this batch
            directives.append(coordinator.heartbeat(second.trial_id, second.lease_id))

    def expiry() -> None:
        holding.wait(10)
        clocks.sleep(100.0)
        try:
            coordinator.expire_leases()
        except Exception as exc:  # a store that timed out waiting for the batch, say
            errors.append(exc)
        noticed.set()

    threads = [threading.Thread(target=batch, daemon=True), threading.Thread(target=expiry, daemon=True)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads)
        assert directives == [CONTINUE, CONTINUE] and errors == []
        assert lease_reaches(coordinator, first, clocks.wall + 30.0)
        assert lease_reaches(coordinator, second, clocks.wall + 30.0)
    finally:
        if not any(thread.is_alive() for thread in threads):
            coordinator.close()


@pytest.mark.parametrize("away", ["waited", "slept briefly"])
def test_a_lease_that_ran_out_while_the_coordinator_ran_is_lost(tmp_path: Path, away: str) -> None:
    clocks = Clocks()
    with coordinator_on(tmp_path, clocks) as coordinator:
        assignment = leased(coordinator)
        if away == "slept briefly":  # shorter than a fifth of the lease: no lease was cut short by it
            clocks.sleep(5.0)
        clocks.run(40.0)
        with pytest.raises(LeaseLostError):
            coordinator.heartbeat(assignment.trial_id, assignment.lease_id)


_PAUSED_AGENT = """
import sys
from pathlib import Path
from sweeper.agents import Agent
from sweeper.coordinator import Coordinator
from sweeper.protocol import AgentInfo
from sweeper.store import open_store

db, sweep_id, workdir = sys.argv[1:]
coordinator = Coordinator(open_store(db), lease_seconds=3.0)
print(Agent(coordinator, sweep_id, info=AgentInfo(name="a", host="here"), workdir=Path(workdir)).run())
"""


def test_an_embedded_agent_stopped_longer_than_a_lease_goes_on_with_its_trial(tmp_path: Path) -> None:
    # Ctrl-Z on `sweeper agent --db ...`: the trial, in a process group of its own, runs on; the
    # agent and its coordinator are stopped. After `fg`, the trial's lease is held again.
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    raw = {
        "method": "grid",
        "program": str(SCRIPTS / "e2e_trial.py"),
        "metric": {"name": "score", "goal": "maximize"},
        "parameters": {"x": {"value": 1}, "epochs": {"value": 20}, "sleep": {"value": 0.5}},
    }
    with Coordinator(open_store(db)) as coordinator:
        sweep_id = coordinator.create_sweep(parse_sweep(raw)).id
    workdir = tmp_path / "agent"
    agent = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_AGENT, db, sweep_id, str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_until(lambda: any(workdir.rglob("metrics.jsonl")), timeout=60), "the trial to start"
        os.kill(agent.pid, signal.SIGSTOP)
        time.sleep(8.0)  # more than two leases of 3 s
        os.kill(agent.pid, signal.SIGCONT)
        output, _ = agent.communicate(timeout=120)
    finally:
        agent.kill()
    assert agent.returncode == 0, output
    with Coordinator(open_store(db)) as coordinator:
        assert [t.state for t in coordinator.trials(sweep_id)] == [TrialState.FINISHED], output
    assert "did not run for" in output
