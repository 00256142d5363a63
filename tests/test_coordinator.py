"""The embedded coordinator over a real SQLite store, with a fake clock for leases."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sweeper.integrations.base import Leaderboard, LeaderRow

from sweeper import coordinator as coordinator_module
from sweeper.coordinator import Coordinator
from sweeper.protocol import (
    AgentInfo,
    Assignment,
    LeaseLostError,
    NoTrial,
    NoTrialReason,
    TrialOutcome,
    interrupted_reason,
)
from sweeper.results import ranked
from sweeper.spec import parse_sweep
from sweeper.store import open_store
from sweeper.store.base import InvalidTransitionError
from sweeper.trials import MetricPoint, SweepState, TrialState

AGENT = AgentInfo(name="host:1:0", host="host")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def coordinator(tmp_path: Path, clock: FakeClock) -> Coordinator:
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    yield Coordinator(store, clock=clock, lease_seconds=30)
    store.close()


def grid(values: list, **extra: object) -> dict:
    return {
        "method": "grid",
        "program": "t.py",
        "metric": {"name": "acc", "goal": "maximize"},
        "parameters": {"x": {"values": values}},
        **extra,
    }


def lease(c: Coordinator, sweep_id: str) -> Assignment:
    got = c.next_trial(sweep_id, AGENT)
    assert isinstance(got, Assignment), got
    return got


def finish(c: Coordinator, a: Assignment, state: TrialState = TrialState.FINISHED, acc: float = 0.5) -> None:
    c.report_metrics(a.trial_id, a.lease_id, [MetricPoint("acc", acc, step=0, seq=0, time=0.0)])
    c.finish_trial(
        a.trial_id, a.lease_id, TrialOutcome(state, exit_code=0 if state is TrialState.FINISHED else 1)
    )


def test_grid_runs_to_completion_and_the_sweep_finishes(coordinator: Coordinator) -> None:
    sweep = coordinator.create_sweep(parse_sweep(grid([1, 2])))
    a, b = lease(coordinator, sweep.id), lease(coordinator, sweep.id)
    assert {a.config["x"], b.config["x"]} == {1, 2}
    assert a.command == ("${env}", "${interpreter}", "${program}", "${args}") and a.program == "t.py"
    waiting = coordinator.next_trial(sweep.id, AGENT)
    assert isinstance(waiting, NoTrial) and waiting.reason is NoTrialReason.WAIT
    finish(coordinator, a, acc=0.1)
    finish(coordinator, b, acc=0.9)
    done = coordinator.next_trial(sweep.id, AGENT)
    assert isinstance(done, NoTrial) and done.reason is NoTrialReason.DONE and done.agent_should_exit
    assert coordinator.store.get_sweep(sweep.id).state is SweepState.FINISHED
    assert coordinator.best_trial(sweep.id).config == {"x": 2}


def test_an_infinite_value_is_never_the_best(coordinator: Coordinator) -> None:
    sweep = coordinator.create_sweep(parse_sweep(grid([1, 2, 3])))  # acc is maximised
    for acc in (0.5, math.inf, math.nan):
        finish(coordinator, lease(coordinator, sweep.id), acc=acc)
    assert coordinator.best_trial(sweep.id).config == {"x": 1}  # a diverged metric is not a result
    spec = coordinator.spec_of(sweep.id)
    assert [t.config["x"] for t in ranked(spec, coordinator.trials(sweep.id))] == [1, 2, 3]  # then inf, NaN
    rows = tuple(
        LeaderRow(t.number, t.state.value, t.metric("acc"), t.config) for t in coordinator.trials(sweep.id)
    )
    board = Leaderboard(sweep.id, "acc", "maximize", rows)
    assert [r.config["x"] for r in board.ranked()] == [1, 2, 3]
    assert board.best_so_far() == [(1, 0.5), (2, 0.5), (3, 0.5)]


def test_a_lost_trials_partial_value_ranks_after_the_results(coordinator: Coordinator) -> None:
    sweep = coordinator.create_sweep(parse_sweep(grid([1, 2])))  # acc is maximised
    lost, done = lease(coordinator, sweep.id), lease(coordinator, sweep.id)
    coordinator.report_metrics(
        lost.trial_id, lost.lease_id, [MetricPoint("acc", 0.9, step=0, seq=0, time=0.0)]
    )
    coordinator.finish_trial(lost.trial_id, lost.lease_id, TrialOutcome(TrialState.LOST, stop_reason="gone"))
    finish(coordinator, done, acc=0.5)
    spec = coordinator.spec_of(sweep.id)
    trials = coordinator.trials(sweep.id)
    assert [t.number for t in ranked(spec, trials)] == [done.trial_number, lost.trial_number]
    rows = tuple(LeaderRow(t.number, t.state.value, t.metric("acc"), t.config) for t in trials)
    board = Leaderboard(sweep.id, "acc", "maximize", rows)  # what trackers show as the sweep's best
    assert [r.number for r in board.ranked()] == [done.trial_number, lost.trial_number]
    assert board.best_so_far() == [(done.trial_number, 0.5)]


def test_a_failed_configuration_is_retried_once_by_default(coordinator: Coordinator) -> None:
    sweep = coordinator.create_sweep(parse_sweep(grid([1])))
    first = lease(coordinator, sweep.id)
    finish(coordinator, first, TrialState.FAILED)
    retry = lease(coordinator, sweep.id)
    assert retry.config == {"x": 1} and retry.trial_number == 2
    assert coordinator.store.get_trial(retry.trial_id).retry_of == 1
    finish(coordinator, retry, TrialState.FAILED)
    assert coordinator.next_trial(sweep.id, AGENT).reason is NoTrialReason.DONE


def test_configurations_a_broken_script_failed_run_again_once_the_sweep_is_resumed(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    # The script fails every configuration; the agent gives up and the sweep is stopped (as
    # `sweeper run` does); the script is fixed and the sweep resumed.
    sweep = coordinator.create_sweep(parse_sweep(grid([1, 2, 3])))
    for _ in range(2):  # the first attempt and its one retry
        finish(coordinator, lease(coordinator, sweep.id), TrialState.FAILED)
    coordinator.set_sweep_state(sweep.id, SweepState.STOPPED)
    clock.now += 60
    coordinator.set_sweep_state(sweep.id, SweepState.RUNNING)
    again = lease(coordinator, sweep.id)
    assert again.config == {"x": 1} and coordinator.store.get_trial(again.trial_id).retry_of == 2
    finish(coordinator, again, TrialState.FAILED)  # a retry is left after the resume too
    retried = lease(coordinator, sweep.id)
    assert retried.config == {"x": 1}
    finish(coordinator, retried, TrialState.FAILED)
    assert lease(coordinator, sweep.id).config == {"x": 2}  # its retries are used up again
    # `sweeper agent` gives up without stopping the sweep: resuming it as it runs does the same.
    clock.now += 60
    coordinator.set_sweep_state(sweep.id, SweepState.RUNNING)
    assert lease(coordinator, sweep.id).config == {"x": 1}


def test_a_finished_sweep_with_configurations_that_failed_says_so_and_resumes_to_run_them(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    """A grid whose x=1 failed on every attempt finishes (each combination has run); it says which
    have no result, and `sweeper resume` runs those again, once the script is fixed. A finished
    sweep with a result for each configuration stays finished."""
    sweep = coordinator.create_sweep(parse_sweep(grid([1, 2])))
    for _ in range(2):  # x=1 and its retry fail; x=2 finishes
        finish(coordinator, lease(coordinator, sweep.id), TrialState.FAILED)
    finish(coordinator, lease(coordinator, sweep.id))
    done = coordinator.next_trial(sweep.id, AGENT)
    assert isinstance(done, NoTrial) and done.reason is NoTrialReason.DONE, done
    assert done.message.endswith(
        f"; 1 configuration has no result: fix what failed, then 'sweeper resume {sweep.id}' and an "
        "agent run them again"
    ), done.message
    assert coordinator.get_sweep(sweep.id).state is SweepState.FINISHED
    clock.now += 60
    assert coordinator.set_sweep_state(sweep.id, SweepState.RUNNING).state is SweepState.RUNNING
    again = lease(coordinator, sweep.id)
    assert again.config == {"x": 1} and coordinator.store.get_trial(again.trial_id).retry_of == 2
    finish(coordinator, again)
    done = coordinator.next_trial(sweep.id, AGENT)
    assert isinstance(done, NoTrial) and "no result" not in done.message, done
    assert coordinator.get_sweep(sweep.id).state is SweepState.FINISHED
    with pytest.raises(
        InvalidTransitionError, match="nothing would run again: every configuration has a result"
    ):
        coordinator.set_sweep_state(sweep.id, SweepState.RUNNING)
    assert coordinator.get_sweep(sweep.id).state is SweepState.FINISHED


def test_a_sweep_that_reached_its_target_offers_no_resume_for_what_failed(coordinator: Coordinator) -> None:
    spec = grid([1, 2, 3], metric={"name": "loss", "goal": "minimize", "target": 0.5})
    sweep = coordinator.create_sweep(parse_sweep(spec))
    for _ in range(2):  # x=1 and its retry fail
        finish(coordinator, lease(coordinator, sweep.id), TrialState.FAILED)
    hit = lease(coordinator, sweep.id)
    coordinator.report_metrics(hit.trial_id, hit.lease_id, [MetricPoint("loss", 0.1, 0, 0, 1.0)])
    finish(coordinator, hit)
    done = coordinator.next_trial(sweep.id, AGENT)
    assert isinstance(done, NoTrial) and "reached the metric target" in done.message, done
    assert "no result" not in done.message  # the target ends the sweep: a resume would run nothing
    with pytest.raises(InvalidTransitionError, match="nothing would run again: trial 3 reached the metric"):
        coordinator.set_sweep_state(sweep.id, SweepState.RUNNING)


def test_a_retry_goes_to_another_agent_while_one_is_running_trials(coordinator: Coordinator) -> None:
    # The slot of a broken GPU asks again first; the retry waits for a slot that works.
    broken, working = AGENT, AgentInfo(name="host:1:1", host="host")
    sweep = coordinator.create_sweep(parse_sweep(grid([1, 2, 3])))
    failed = lease(coordinator, sweep.id)
    running = coordinator.next_trial(sweep.id, working)
    finish(coordinator, failed, TrialState.FAILED)
    fresh = lease(coordinator, sweep.id)
    assert fresh.config == {"x": 3} and fresh.trial_number == 3  # a new point, not the retry
    finish(coordinator, fresh, TrialState.FAILED)
    waiting = coordinator.next_trial(sweep.id, broken)  # nothing new left: it waits
    assert isinstance(waiting, NoTrial) and waiting.reason is NoTrialReason.WAIT, waiting
    finish(coordinator, running)
    retries = [coordinator.next_trial(sweep.id, working) for _ in range(2)]
    assert sorted(r.config["x"] for r in retries) == [1, 3]
    for retry in retries:
        finish(coordinator, retry)
    # With no other agent at work, the agent a configuration failed on runs it again.
    sweep = coordinator.create_sweep(parse_sweep(grid([1])))
    finish(coordinator, lease(coordinator, sweep.id), TrialState.FAILED)
    assert lease(coordinator, sweep.id).config == {"x": 1}


def test_agents_in_containers_with_one_hostname_and_one_pid_have_names_of_their_own() -> None:
    # Host networking shares the hostname, and each container's agent is process 1 (or 2): the
    # retry rule above keeps a failed configuration from the agent it failed on by name.
    from sweeper import local

    first = local.agent_info(0).name
    local._process_tag.cache_clear()  # as in another process with the same id and hostname
    second = local.agent_info(0).name
    assert second != first and second.split(":")[1].startswith(f"{os.getpid()}-")
    assert local.agent_info(1).name == second.removesuffix(":0") + ":1"  # one tag per process
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = "import os; from sweeper.local import agent_info; print(os.getpid(), agent_info(0).name)"
    command = ["unshare", "-fpr", "--mount-proc", sys.executable, "-c", probe]
    seen = [subprocess.run(command, capture_output=True, text=True, timeout=60) for _ in range(2)]
    if any(r.returncode != 0 for r in seen):
        pytest.skip(f"no PID namespaces here: {seen[0].stderr.strip()}")
    (pid_a, name_a), (pid_b, name_b) = (r.stdout.split() for r in seen)
    assert pid_a == pid_b and name_a != name_b


def test_a_sweep_whose_last_trial_ended_while_it_was_stopped_finishes_when_resumed(
    coordinator: Coordinator,
) -> None:
    sweep = coordinator.create_sweep(parse_sweep(grid([1])))
    last = lease(coordinator, sweep.id)
    coordinator.set_sweep_state(sweep.id, SweepState.STOPPED)
    finish(coordinator, last)
    assert coordinator.set_sweep_state(sweep.id, SweepState.RUNNING).state is SweepState.FINISHED


def test_max_retries_is_configurable(coordinator: Coordinator) -> None:
    sweep = coordinator.create_sweep(parse_sweep(grid([1], sweeper={"max_retries": 0})))
    finish(coordinator, lease(coordinator, sweep.id), TrialState.FAILED)
    assert coordinator.next_trial(sweep.id, AGENT).reason is NoTrialReason.DONE


def test_an_expired_lease_makes_the_trial_lost_and_it_runs_again(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    sweep = coordinator.create_sweep(parse_sweep(grid([1])))
    first = lease(coordinator, sweep.id)
    clock.now += 31
    again = lease(coordinator, sweep.id)  # the expiry is noticed when an agent asks
    assert again.config == first.config
    lost = coordinator.store.get_trial(first.trial_id)
    assert lost.state is TrialState.LOST and "lease expired" in lost.stop_reason
    with pytest.raises(LeaseLostError):
        coordinator.report_metrics(first.trial_id, first.lease_id, [MetricPoint("acc", 1.0, 0, 0, 0.0)])
    with pytest.raises(LeaseLostError):
        coordinator.finish_trial(first.trial_id, first.lease_id, TrialOutcome(TrialState.FINISHED, 0))


def test_an_ask_sent_again_gets_its_trial_only_while_that_trial_runs_under_the_asker(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    sweep = coordinator.create_sweep(parse_sweep(grid([1, 2, 3, 4])))
    asked = "a" * 32
    first = coordinator.next_trial(sweep.id, AGENT, request_id=asked)
    assert isinstance(first, Assignment) and first.lease_id == asked
    clock.now += 20
    again = coordinator.next_trial(sweep.id, AGENT, request_id=asked, resent=True)
    assert isinstance(again, Assignment)
    assert (again.trial_id, again.config, again.lease_id) == (first.trial_id, first.config, asked)
    clock.now += 20  # 40 s after the first lease, within 30 s of the second: held afresh
    assert not coordinator.heartbeat(first.trial_id, asked).stop
    other = AgentInfo(name="host:2:0", host="host")
    elsewhere = coordinator.next_trial(sweep.id, other, request_id=asked, resent=True)
    assert isinstance(elsewhere, Assignment) and elsewhere.trial_id != first.trial_id
    finish(coordinator, again)
    after_end = coordinator.next_trial(sweep.id, AGENT, request_id=asked, resent=True)
    assert isinstance(after_end, Assignment), "an ended trial is not handed out again"
    assert after_end.trial_id not in (first.trial_id, elsewhere.trial_id)
    states = {t.number: t.state for t in coordinator.store.list_trials(sweep.id)}
    assert states == {1: TrialState.FINISHED, 2: TrialState.RUNNING, 3: TrialState.RUNNING}


def test_an_ask_for_no_new_lease_gets_the_trial_its_request_leased_or_nothing(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    """What a stopping agent asks, to end a trial whose answer never reached it."""
    sweep = coordinator.create_sweep(parse_sweep(grid([1, 2, 3])))
    nothing = coordinator.next_trial(sweep.id, AGENT, request_id="c" * 32, resent=True, new_lease=False)
    assert isinstance(nothing, NoTrial) and nothing.reason is NoTrialReason.WAIT
    assert coordinator.store.list_trials(sweep.id) == [], "it leased nothing"
    asked = "d" * 32
    first = coordinator.next_trial(sweep.id, AGENT, request_id=asked)
    assert isinstance(first, Assignment)
    clock.now += 20
    again = coordinator.next_trial(sweep.id, AGENT, request_id=asked, resent=True, new_lease=False)
    assert isinstance(again, Assignment) and (again.trial_id, again.lease_id) == (first.trial_id, asked)
    other = AgentInfo(name="host:2:0", host="host")
    assert isinstance(
        coordinator.next_trial(sweep.id, other, request_id=asked, resent=True, new_lease=False), NoTrial
    ), "another agent's ask does not get it"
    coordinator.set_sweep_state(sweep.id, SweepState.PAUSED)  # it still gets the trial it holds
    paused = coordinator.next_trial(sweep.id, AGENT, request_id=asked, resent=True, new_lease=False)
    assert isinstance(paused, Assignment) and paused.trial_id == first.trial_id
    coordinator.set_sweep_state(sweep.id, SweepState.RUNNING)
    finish(coordinator, again)
    ended = coordinator.next_trial(sweep.id, AGENT, request_id=asked, resent=True, new_lease=False)
    assert isinstance(ended, NoTrial), "an ended trial is not handed out again, nor a new one"
    assert [t.number for t in coordinator.store.list_trials(sweep.id)] == [1]
    with pytest.raises(ValueError, match="request_id"):
        coordinator.next_trial(sweep.id, AGENT, new_lease=False)


def test_an_ask_sent_again_while_the_first_is_under_way_gets_the_trial_the_first_leases(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client stopped waiting (a slow database, a proxy's timeout) and asked again; the first
    ask is still planning its lease, under the sweep's lock."""
    sweep = coordinator.create_sweep(parse_sweep(grid([1, 2, 3])))
    planning, go_on = threading.Event(), threading.Event()
    plan_next = coordinator_module.plan_next

    def slow_first_plan(*args: object, **kwargs: object) -> object:
        if not planning.is_set():
            planning.set()
            assert go_on.wait(30)
        return plan_next(*args, **kwargs)

    monkeypatch.setattr(coordinator_module, "plan_next", slow_first_plan)
    asked = "b" * 32
    answers: dict[str, object] = {}

    def ask(which: str, resent: bool) -> None:
        answers[which] = coordinator.next_trial(sweep.id, AGENT, request_id=asked, resent=resent)

    first = threading.Thread(target=ask, args=("first", False))
    first.start()
    assert planning.wait(30)
    again = threading.Thread(target=ask, args=("again", True))
    again.start()
    again.join(0.5)  # it waits for the sweep's lock
    go_on.set()
    first.join(30)
    again.join(30)
    assert isinstance(answers["first"], Assignment) and isinstance(answers["again"], Assignment)
    assert answers["again"].trial_id == answers["first"].trial_id
    assert [t.number for t in coordinator.store.list_trials(sweep.id)] == [1]


def test_heartbeats_keep_the_lease(coordinator: Coordinator, clock: FakeClock) -> None:
    sweep = coordinator.create_sweep(parse_sweep(grid([1, 2])))
    a = lease(coordinator, sweep.id)
    for _ in range(5):
        clock.now += 20
        assert not coordinator.heartbeat(a.trial_id, a.lease_id).stop
    lease(coordinator, sweep.id)
    assert coordinator.store.get_trial(a.trial_id).state is TrialState.RUNNING


def test_run_cap_and_metric_target_end_the_sweep(coordinator: Coordinator) -> None:
    capped = coordinator.create_sweep(parse_sweep(grid([1, 2, 3], run_cap=1)))
    finish(coordinator, lease(coordinator, capped.id))
    got = coordinator.next_trial(capped.id, AGENT)
    assert got.reason is NoTrialReason.DONE and "run_cap" in got.message

    # Retries are not new configurations: a failed or interrupted one under the cap runs again.
    capped = coordinator.create_sweep(parse_sweep(grid([1, 2, 3], run_cap=2)))
    first, second = lease(coordinator, capped.id), lease(coordinator, capped.id)
    finish(coordinator, first, TrialState.FAILED)
    coordinator.finish_trial(
        second.trial_id,
        second.lease_id,
        TrialOutcome(TrialState.LOST, stop_reason=interrupted_reason("SIGTERM")),
    )
    again = [lease(coordinator, capped.id) for _ in range(2)]
    assert sorted(a.config["x"] for a in again) == [1, 2]
    assert isinstance(coordinator.next_trial(capped.id, AGENT), NoTrial)  # a wait: they may fail
    for a in again:
        finish(coordinator, a)
    got = coordinator.next_trial(capped.id, AGENT)
    assert got.reason is NoTrialReason.DONE and "run_cap of 2" in got.message
    assert [t.state for t in coordinator.trials(capped.id)].count(TrialState.FINISHED) == 2

    raw = grid([1, 2, 3])
    raw["metric"]["target"] = 0.8
    target = coordinator.create_sweep(parse_sweep(raw))
    finish(coordinator, lease(coordinator, target.id), acc=0.95)
    got = coordinator.next_trial(target.id, AGENT)
    assert got.reason is NoTrialReason.DONE and "target" in got.message


def test_paused_waits_cancelled_stops_running_trials(coordinator: Coordinator) -> None:
    sweep = coordinator.create_sweep(parse_sweep(grid([1, 2, 3])))
    a = lease(coordinator, sweep.id)
    coordinator.set_sweep_state(sweep.id, SweepState.PAUSED)
    assert coordinator.next_trial(sweep.id, AGENT).reason is NoTrialReason.WAIT
    coordinator.set_sweep_state(sweep.id, SweepState.CANCELLED)
    assert coordinator.next_trial(sweep.id, AGENT).reason is NoTrialReason.STOPPED
    directive = coordinator.heartbeat(a.trial_id, a.lease_id)
    assert directive.stop and directive.reason == "sweep cancelled"


def test_concurrent_agents_never_share_a_grid_point(coordinator: Coordinator) -> None:
    sweep = coordinator.create_sweep(parse_sweep(grid(list(range(30)))))
    got: list[int] = []
    lock = threading.Lock()

    def agent(i: int) -> None:
        me = AgentInfo(name=f"h:{i}", host="h")
        while isinstance(a := coordinator.next_trial(sweep.id, me), Assignment):
            with lock:
                got.append(a.config["x"])
            coordinator.finish_trial(a.trial_id, a.lease_id, TrialOutcome(TrialState.FINISHED, 0))

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(30))


def test_expiring_leases_without_any_agent_asking_ends_the_sweep(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    # Every agent is gone: the periodic pass (the server runs one) finds the lost trial and the sweep ends.
    sweep = coordinator.create_sweep(parse_sweep(grid([1], sweeper={"max_retries": 0})))
    trial = lease(coordinator, sweep.id)
    clock.now += 31
    coordinator.expire_leases()
    assert coordinator.store.get_trial(trial.trial_id).state is TrialState.LOST
    assert coordinator.get_sweep(sweep.id).state is SweepState.FINISHED


def test_a_complete_sweep_left_running_with_no_trial_running_is_finished_by_the_next_pass(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    """Two programs ending a sweep's last two trials at once on one PostgreSQL database each
    count the other's trial as still running, and neither finishes the sweep (their ends here go
    to the store directly, as that leaves it): the periodic pass does."""
    sweep = coordinator.create_sweep(parse_sweep(grid([1, 2])))
    leased = [lease(coordinator, sweep.id) for _ in range(2)]
    for a in leased:
        coordinator.store.end_trial(a.trial_id, a.lease_id, TrialState.FINISHED, now=clock.now)
    assert coordinator.get_sweep(sweep.id).state is SweepState.RUNNING
    clock.now += 2  # past the interval between passes
    coordinator.expire_leases()
    assert coordinator.get_sweep(sweep.id).state is SweepState.FINISHED


def test_the_pass_looks_at_an_idle_sweep_again_only_once_another_of_its_trials_ended(
    coordinator: Coordinator, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting = coordinator.create_sweep(parse_sweep(grid([1, 2, 3])))  # idle, not complete
    first = lease(coordinator, waiting.id)
    coordinator.store.end_trial(first.trial_id, None, TrialState.FINISHED, now=clock.now)
    looked: list[str] = []
    real = coordinator._finish_idle_sweep_if_complete
    monkeypatch.setattr(coordinator, "_finish_idle_sweep_if_complete", lambda s: looked.append(s) or real(s))
    for _ in range(3):
        clock.now += 2
        coordinator.expire_leases()
    assert looked == [waiting.id]
    second = lease(coordinator, waiting.id)
    coordinator.store.end_trial(second.trial_id, None, TrialState.FAILED, now=clock.now)
    for _ in range(2):
        clock.now += 2
        coordinator.expire_leases()
    assert looked == [waiting.id, waiting.id]
    assert coordinator.get_sweep(waiting.id).state is SweepState.RUNNING


def test_the_pass_does_not_look_again_at_a_sweep_whose_last_end_looked_at_it(
    coordinator: Coordinator, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting = coordinator.create_sweep(parse_sweep(grid([1, 2, 3])))  # idle, not complete
    finish(coordinator, lease(coordinator, waiting.id))  # its end looks: is the sweep complete?
    looked: list[str] = []
    real = coordinator._finish_idle_sweep_if_complete
    monkeypatch.setattr(coordinator, "_finish_idle_sweep_if_complete", lambda s: looked.append(s) or real(s))
    clock.now += 2
    coordinator.expire_leases()
    assert looked == []


def test_a_sweep_that_cannot_be_judged_does_not_stop_the_pass_or_the_lease(
    coordinator: Coordinator,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = coordinator.create_sweep(parse_sweep(grid([1, 2])))
    first = lease(coordinator, broken.id)
    coordinator.store.end_trial(first.trial_id, None, TrialState.FINISHED, now=clock.now)
    other = coordinator.create_sweep(parse_sweep(grid([1])))
    real = coordinator._finish_idle_sweep_if_complete

    def judge(sweep_id: str) -> None:
        if sweep_id == broken.id:
            raise ValueError("spec from a newer version")
        real(sweep_id)

    monkeypatch.setattr(coordinator, "_finish_idle_sweep_if_complete", judge)
    clock.now += 2
    assert lease(coordinator, other.id).trial_number == 1  # the lease ran the pass
    assert "could not tell whether sweep" in caplog.text and broken.id in caplog.text


def test_a_cancel_racing_the_last_trial_keeps_the_cancel(coordinator: Coordinator) -> None:
    sweep = coordinator.create_sweep(parse_sweep(grid([1])))
    a = lease(coordinator, sweep.id)
    coordinator.set_sweep_state(sweep.id, SweepState.CANCELLED)
    coordinator.finish_trial(a.trial_id, a.lease_id, TrialOutcome(TrialState.FINISHED, exit_code=0))
    assert coordinator.get_sweep(sweep.id).state is SweepState.CANCELLED


def test_a_long_lived_coordinator_keeps_a_bounded_number_of_compiled_specs(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coordinator_module, "_KNOWN_SPECS", 2)
    sweeps = [coordinator.create_sweep(parse_sweep(grid([1, 2, 3]))).id for _ in range(4)]
    for _ in range(3):  # each sweep again after its compiled spec was dropped: same grid order
        for sweep_id in sweeps:
            finish(coordinator, lease(coordinator, sweep_id))
            assert len(coordinator._specs) <= 2
    for sweep_id in sweeps:
        assert [t.config["x"] for t in coordinator.trials(sweep_id)] == [1, 2, 3]
        assert coordinator.get_sweep(sweep_id).state is SweepState.FINISHED
        assert len(coordinator._specs) <= 2


@pytest.mark.parametrize(("method", "with_history"), [("bohb", True), ("hyperband", False)])
def test_a_strategy_that_asks_for_metric_histories_gets_them(
    coordinator: Coordinator, method: str, with_history: bool
) -> None:
    sweep = coordinator.create_sweep(
        parse_sweep(
            {
                "method": method,
                "program": "t.py",
                "metric": {"name": "acc", "goal": "maximize"},
                "parameters": {"x": {"min": 0.0, "max": 1.0}, "epochs": {"value": 9}},
                "sweeper": {"resource": "epochs"},
            }
        )
    )
    first = lease(coordinator, sweep.id)
    points = [MetricPoint("acc", 0.1 * i, step=i, seq=i, time=0.0) for i in range(3)]
    # Other metrics are not read for the strategy: only the sweep's metric makes its results.
    points += [MetricPoint("loss", 1.0 - 0.1 * i, step=i, seq=i, time=0.0) for i in range(3)]
    coordinator.report_metrics(first.trial_id, first.lease_id, points)
    _, strategy, _ = coordinator._compiled_by_id(sweep.id)
    seen = []
    real = strategy.suggest
    strategy.suggest = lambda trials, rng: seen.append(list(trials)) or real(trials, rng)  # type: ignore[method-assign]
    lease(coordinator, sweep.id)
    (earlier,) = seen[-1]
    if with_history:  # BOHB reads each trial's value at each rung from its history
        assert [(p.step, p.value) for p in earlier.history] == [(i, 0.1 * i) for i in range(3)]
    else:  # everyone else decides from summaries, and the lease costs no history query
        assert earlier.history is None


@pytest.mark.parametrize("method", ["bayes", "tpe"])
def test_a_trial_that_ends_costs_a_model_search_no_suggestion(coordinator: Coordinator, method: str) -> None:
    # One agent: every trial ends with nothing else running, so the coordinator asks whether the
    # sweep is complete. A model-based strategy answers that from its space alone; before, it
    # fitted its model for a suggestion nobody ran, doubling the wait between trials.
    spec = {
        "method": method,
        "program": "t.py",
        "metric": {"name": "acc", "goal": "maximize"},
        "parameters": {"x": {"values": [1, 2, 3, 4, 5, 6]}},
    }
    sweep = coordinator.create_sweep(parse_sweep(spec))
    _, strategy, _ = coordinator._compiled_by_id(sweep.id)
    suggested = []
    real = strategy.suggest
    strategy.suggest = lambda trials, rng: suggested.append(len(trials)) or real(trials, rng)  # type: ignore[method-assign]
    for n in range(6):
        finish(coordinator, lease(coordinator, sweep.id), acc=0.1 * n)
    assert suggested == [0, 1, 2, 3, 4, 5]  # one per trial leased
    # The space is exhausted: the last trial's end finished the sweep without another suggestion.
    assert coordinator.get_sweep(sweep.id).state is SweepState.FINISHED
    answer = coordinator.next_trial(sweep.id, AGENT)
    assert isinstance(answer, NoTrial) and answer.reason is NoTrialReason.DONE
    assert "all 6 configurations of the finite space have been tried" in answer.message
    assert suggested == [0, 1, 2, 3, 4, 5]


def test_an_interrupted_trial_is_no_attempt_however_often_it_happens() -> None:
    from sweeper.planning import may_run_again
    from sweeper.protocol import interrupted_reason
    from sweeper.trials import Trial

    def attempt(number: int, state: TrialState, reason: str | None = None) -> Trial:
        return Trial(number, "sw", number, {"x": 1}, state, 0.0, stop_reason=reason)

    cut = interrupted_reason("SIGTERM")
    assert may_run_again([attempt(1, TrialState.LOST, cut)], max_retries=0)
    assert may_run_again([attempt(1, TrialState.LOST, cut), attempt(2, TrialState.LOST, cut)], max_retries=1)
    assert may_run_again([attempt(1, TrialState.FAILED), attempt(2, TrialState.LOST, cut)], max_retries=1)
    # Lost to an expired lease (the machine went away) counts, as the retry policy says.
    expired = "lease expired"
    assert not may_run_again(
        [attempt(1, TrialState.LOST, expired), attempt(2, TrialState.LOST, expired)], max_retries=1
    )
