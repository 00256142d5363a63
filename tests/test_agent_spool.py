"""Reports kept on disk: the spool, the kept end state, and delivering what an agent left behind."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from process_support import left_by_a_dead_agent, written_by
from sweeper.agents.reporting import TrialReporter, backoff_delay, deliver_leftovers
from sweeper.agents.spool import Spool, leftover_spools

from sweeper.coordinator import Coordinator
from sweeper.protocol import AgentInfo, Assignment, TrialNotFoundError, TrialOutcome
from sweeper.spec import parse_sweep
from sweeper.store import open_store
from sweeper.trials import MetricPoint, TrialState

INFO = AgentInfo(name="spool-test", host="localhost")
SCRIPTS = Path(__file__).parent / "scripts"


def points(seqs: range) -> list[MetricPoint]:
    return [MetricPoint("loss", 1.0 / (s + 1), s, s, 1700000000.0 + s) for s in seqs]


@pytest.fixture
def coordinator(sqlite_store_url: str):
    store = open_store(sqlite_store_url)
    yield Coordinator(store, lease_seconds=60.0)
    store.close()


def lease(coordinator: Coordinator, n: int = 3) -> Assignment:
    sweep = coordinator.create_sweep(
        parse_sweep({"method": "grid", "parameters": {"x": {"values": list(range(n))}}})
    )
    got = coordinator.next_trial(sweep.id, INFO)
    assert isinstance(got, Assignment)
    return got


def leased_spool(workdir: Path, coordinator: Coordinator) -> tuple[Assignment, Spool]:
    """A leased trial and a fresh spool in its folder, as an agent makes them, by an agent on this
    machine that has died since (the spools of this process's own trials are in use)."""
    a = lease(coordinator)
    path = workdir / ".sweeper" / "trials" / a.sweep_id / str(a.trial_number)
    path.mkdir(parents=True)
    spool = Spool.create(path, a)
    left_by_a_dead_agent(spool)
    return a, spool


def reporter_on(coordinator: Coordinator, a: Assignment, spool: Spool) -> TrialReporter:
    return TrialReporter(
        coordinator, a, clock=lambda: 0.0, report_interval=0.0, heartbeat_interval=1.0, queue=spool
    )


def delivered_seqs(coordinator: Coordinator, a: Assignment) -> list[int]:
    return [p.seq for p in coordinator.trials(a.sweep_id, with_history=True)[0].history]


def test_points_are_on_disk_before_they_are_sent_and_acks_survive_a_reopen(
    tmp_path: Path, coordinator
) -> None:
    a, spool = leased_spool(tmp_path, coordinator)
    spool.append(points(range(5)))
    spool.ack(2)
    again = Spool.open(spool.folder)
    assert (again.trial_id, again.lease_id, again.sweep_id) == (a.trial_id, a.lease_id, a.sweep_id)
    assert [p.seq for p in again.unacked()] == [2, 3, 4]
    assert again.pending == 3


def test_a_spool_that_cannot_be_written_keeps_its_points_in_memory_and_they_are_sent(
    tmp_path: Path, coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    a, spool = leased_spool(tmp_path, coordinator)
    spool.append(points(range(2)))
    spool.path.unlink()
    spool.path.mkdir()  # the file cannot be opened for writing any more, as on a full disk ...
    spool.acked_path.with_name(spool.acked_path.name + ".tmp").mkdir()  # ... nor the acked count
    spool.append(points(range(2, 5)))  # no error reaches the agent
    spool.append(points(range(5, 6)))
    assert spool.pending == 6 and "kept in memory only" in caplog.text
    reporter_on(coordinator, a, spool).send_all()
    assert delivered_seqs(coordinator, a) == list(range(6))


def test_an_acked_count_that_cannot_be_written_does_not_fail_a_report_that_arrived(
    tmp_path: Path, coordinator
) -> None:
    a, spool = leased_spool(tmp_path, coordinator)
    spool.append(points(range(3)))
    spool.acked_path.with_name(spool.acked_path.name + ".tmp").mkdir()  # as on a full disk
    reporter = reporter_on(coordinator, a, spool)
    reporter.send_all()  # arrives; no error reaches the reporter
    spool.append(points(range(3, 5)))
    reporter.send_all()
    assert spool.pending == 0
    assert delivered_seqs(coordinator, a) == list(range(5))


def test_acknowledged_points_leave_memory_but_stay_on_disk_until_the_end(tmp_path: Path, coordinator) -> None:
    a, spool = leased_spool(tmp_path, coordinator)
    tracemalloc.start()
    try:
        held_before = tracemalloc.get_traced_memory()[0]
        for start in range(0, 30_000, 100):  # a long trial: every report acknowledged as it goes
            spool.append(points(range(start, start + 100)))
            spool.ack(100)
        held = tracemalloc.get_traced_memory()[0] - held_before
    finally:
        tracemalloc.stop()
    assert held < 1_000_000, f"{held} bytes still held for 30,000 acknowledged points"  # ~6 MB if kept
    spool.append(points(range(30_000, 30_003)))
    assert [p.seq for p in spool.unacked()] == [30_000, 30_001, 30_002]
    again = Spool.open(spool.folder)  # after a crash: the file still has every point, and the count
    assert [p.seq for p in again.unacked()] == [30_000, 30_001, 30_002]


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path, coordinator) -> None:
    a, spool = leased_spool(tmp_path, coordinator)
    spool.append(points(range(2)))
    with open(spool.path, "a") as fh:
        fh.write('{"name": "loss", "val')  # the agent died in the middle of this write
    assert [p.seq for p in Spool.open(spool.folder).unacked()] == [0, 1]


def test_leftovers_are_delivered_once_and_the_trial_ends(tmp_path: Path, coordinator) -> None:
    a, spool = leased_spool(tmp_path, coordinator)
    spool.append(points(range(4)))
    spool.ack(1)  # the first point reached the coordinator before the agent died
    coordinator.report_metrics(a.trial_id, a.lease_id, points(range(1)))
    spool.keep_outcome(TrialOutcome(TrialState.FINISHED, exit_code=0))

    assert deliver_leftovers(coordinator, tmp_path, a.sweep_id) == 1
    trial = coordinator.store.get_trial(a.trial_id, with_history=True)
    assert trial.state is TrialState.FINISHED and trial.exit_code == 0
    assert sorted(p.seq for p in trial.history or ()) == [0, 1, 2, 3]
    assert list(leftover_spools(tmp_path)) == []
    assert deliver_leftovers(coordinator, tmp_path, a.sweep_id) == 0


def test_a_running_trials_spool_is_drained_but_never_finished(tmp_path: Path, coordinator) -> None:
    """Another agent in the same folder may still be running it."""
    a, spool = leased_spool(tmp_path, coordinator)
    spool.append(points(range(3)))
    assert deliver_leftovers(coordinator, tmp_path) == 0
    trial = coordinator.store.get_trial(a.trial_id, with_history=True)
    assert trial.state is TrialState.RUNNING and len(trial.history or ()) == 3
    assert Spool.open(spool.folder).pending == 0


def test_a_lost_lease_abandons_the_spool_keeps_its_file_and_says_so_once(
    tmp_path: Path, coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    a, spool = leased_spool(tmp_path, coordinator)
    spool.append(points(range(2)))
    spool.keep_outcome(TrialOutcome(TrialState.FINISHED, exit_code=0))
    coordinator.store.finish_trial(a.trial_id, None, TrialState.LOST, now=0.0)
    with caplog.at_level(logging.WARNING, logger="sweeper.agents.reporting"):
        assert deliver_leftovers(coordinator, tmp_path) == 0
        assert deliver_leftovers(coordinator, tmp_path) == 0
    assert spool.is_abandoned and spool.path.exists()
    assert list(leftover_spools(tmp_path)) == []
    # A finished result that will not count is said, with where it is kept, not dropped silently.
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith(
        f"trial {a.trial_number} of sweep {a.sweep_id}, finished under an earlier agent here: its reports "
        "are not taken, as its lease had ended before they were sent: the coordinator counted it lost"
    ), said
    assert str(spool.folder) in said


def test_an_interruption_kept_on_disk_is_taken_after_the_lease_ran_out(tmp_path: Path, coordinator) -> None:
    """The agent was told to stop while the coordinator was away (a node drained with its
    coordinator), kept the end on disk, and the lease ran out meanwhile: the next agent here
    delivers it all the same, so the trial's configuration runs again without using an attempt."""
    sweep = coordinator.create_sweep(
        parse_sweep(
            {"method": "grid", "parameters": {"x": {"values": [1, 2]}}, "sweeper": {"max_retries": 0}}
        )
    )
    a = coordinator.next_trial(sweep.id, INFO)
    path = tmp_path / ".sweeper" / "trials" / a.sweep_id / str(a.trial_number)
    path.mkdir(parents=True)
    spool = Spool.create(path, a)
    left_by_a_dead_agent(spool)
    spool.append(points(range(2)))
    spool.keep_outcome(TrialOutcome(TrialState.LOST, exit_code=-15, stop_reason="interrupted (SIGTERM)"))
    coordinator.store.expire_leases(now=time.time() + 120)
    other = coordinator.next_trial(sweep.id, AgentInfo(name="other", host="localhost"))  # reads the sweep
    assert isinstance(other, Assignment) and other.config == {"x": 2}

    assert deliver_leftovers(coordinator, tmp_path, a.sweep_id) == 1
    trial = coordinator.store.get_trial(a.trial_id, with_history=True)
    assert trial.state is TrialState.LOST and trial.stop_reason.startswith(
        "interrupted (SIGTERM); lease expired"
    )
    assert trial.history == (), "its points came after the lease: not taken"
    assert list(leftover_spools(tmp_path)) == []
    again = coordinator.next_trial(sweep.id, INFO)
    assert isinstance(again, Assignment) and again.retry_of == a.trial_number, "no attempt was used"


def owned_by(spool: Spool, pid: int, host: str | None = None, pid_ns: str | None = None) -> None:
    """Make ``spool`` one that the agent with process id ``pid`` on ``host`` (this machine by
    default), in PID namespace ``pid_ns`` (this process's by default), writes."""
    owner: dict[str, object] = {"agent_pid": pid, "host": host or socket.gethostname()}
    if pid_ns is not None:
        owner["pid_ns"] = pid_ns
    written_by(spool, **owner)


def test_the_trials_of_a_live_agent_sharing_the_folder_are_not_leftovers(
    tmp_path: Path, coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    """The agents of a Slurm array start in the folder they were submitted from: one that starts
    while another's trial has just ended leaves that trial's end to its own agent."""
    a, spool = leased_spool(tmp_path, coordinator)
    spool.append(points(range(2)))
    spool.keep_outcome(TrialOutcome(TrialState.FINISHED, exit_code=0))
    other_agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owned_by(spool, other_agent.pid)
        with caplog.at_level(logging.WARNING, logger="sweeper.agents.reporting"):
            assert deliver_leftovers(coordinator, tmp_path, a.sweep_id) == 0
        assert caplog.records == []
        trial = coordinator.store.get_trial(a.trial_id, with_history=True)
        assert trial.state is TrialState.RUNNING and not trial.history, "its agent sends them"
        assert not spool.is_abandoned and spool.finish_path.exists()
    finally:
        other_agent.kill()
        other_agent.wait()
    # Once that agent is gone, they are leftovers like any other.
    assert deliver_leftovers(coordinator, tmp_path, a.sweep_id) == 1
    assert coordinator.store.get_trial(a.trial_id).state is TrialState.FINISHED


@pytest.mark.parametrize("elsewhere", ["another machine", "another container"])
def test_the_trials_another_machine_s_agent_just_wrote_to_are_its_own(
    tmp_path: Path, coordinator, elsewhere: str
) -> None:
    """Agents on other nodes of the cluster, in the same shared folder, or in containers of this
    one that share the folder, the hostname and even this agent's process id (each in a PID
    namespace of its own): one that wrote to its spool in the last minute is taken for running;
    a minute's quiet makes it a leftover."""
    a, spool = leased_spool(tmp_path, coordinator)
    spool.keep_outcome(TrialOutcome(TrialState.FINISHED, exit_code=0))
    if elsewhere == "another machine":
        owned_by(spool, 1, host="another-node")
    else:
        owned_by(spool, os.getpid(), pid_ns="pid:[1]")
    assert deliver_leftovers(coordinator, tmp_path, a.sweep_id) == 0
    assert coordinator.store.get_trial(a.trial_id).state is TrialState.RUNNING
    a_minute_ago = time.time() - 61
    for path in spool.folder.iterdir():
        os.utime(path, (a_minute_ago, a_minute_ago))
    assert deliver_leftovers(coordinator, tmp_path, a.sweep_id) == 1
    assert coordinator.store.get_trial(a.trial_id).state is TrialState.FINISHED


def test_the_trial_processes_of_an_agent_in_another_container_are_not_taken_for_orphans(
    tmp_path: Path,
) -> None:
    """Its process id means nothing here: its trial is neither ended nor forgotten."""
    from sweeper.agents.orphans import RECORD_NAME, end_orphans
    from sweeper.agents.process import this_agent

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folders = {}
    for where, ns in (("here", this_agent()["pid_ns"]), ("elsewhere", "pid:[1]")):
        folders[where] = tmp_path / ".sweeper" / "trials" / "sw" / where
        folders[where].mkdir(parents=True)
        record = {"mark": f"mark-{where}", **this_agent(), "agent_pid": dead.pid, "pid_ns": ns}
        (folders[where] / RECORD_NAME).write_text(json.dumps(record))
    end_orphans(tmp_path, grace=1.0)
    assert not (folders["here"] / RECORD_NAME).exists(), "its agent is gone: forgotten"
    assert (folders["elsewhere"] / RECORD_NAME).exists()


def test_the_spools_of_this_agents_own_trials_are_not_leftovers(tmp_path: Path, coordinator) -> None:
    """Leftovers are looked for again while the agent runs trials of its own."""
    a = lease(coordinator)
    path = tmp_path / ".sweeper" / "trials" / a.sweep_id / str(a.trial_number)
    path.mkdir(parents=True)
    spool = Spool.create(path, a)  # this process's, and so in use
    spool.append(points(range(2)))
    assert spool.in_use and list(leftover_spools(tmp_path)) == []
    assert deliver_leftovers(coordinator, tmp_path, a.sweep_id) == 0
    assert not coordinator.store.get_trial(a.trial_id, with_history=True).history


def test_a_spool_quiet_only_after_the_agents_started_is_delivered_while_they_run(
    tmp_path: Path, coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container restarted at once (a new PID namespace, the same hostname and folder): what its
    earlier life kept on disk looks like a neighbour's until a quiet minute has passed, and the
    agents look again while they run, so it is delivered then, not left for the next start."""
    from sweeper.agents import spool as spool_module

    from sweeper import local
    from sweeper.local import LocalAgents

    monkeypatch.setattr(spool_module, "FOREIGN_QUIET_SECONDS", 1.0)
    monkeypatch.setattr(local, "LEFTOVERS_AGAIN_SECONDS", 0.5)
    sweep = coordinator.create_sweep(
        parse_sweep({"method": "grid", "parameters": {"x": {"values": [1, 2]}, "pause": {"value": 4.0}}})
    )
    earlier = coordinator.next_trial(sweep.id, INFO)
    path = tmp_path / ".sweeper" / "trials" / sweep.id / str(earlier.trial_number)
    path.mkdir(parents=True)
    kept = Spool.create(path, earlier)
    owned_by(kept, 1, pid_ns="pid:[1]")
    kept.keep_outcome(TrialOutcome(TrialState.LOST, exit_code=-15, stop_reason="interrupted (SIGTERM)"))

    agents = LocalAgents(
        coordinator, sweep.id, count=1, workdir=tmp_path, program_override=str(SCRIPTS / "trial.py")
    )
    agents.start()
    assert coordinator.store.get_trial(earlier.trial_id).state is TrialState.RUNNING, "not at the start"
    agents.wait()
    first = coordinator.store.get_trial(earlier.trial_id)
    assert (first.state, first.stop_reason) == (TrialState.LOST, "interrupted (SIGTERM)")
    assert [t.state for t in coordinator.trials(sweep.id)] == [TrialState.LOST, TrialState.FINISHED]


def test_leftovers_of_other_sweeps_are_left_alone(tmp_path: Path, coordinator) -> None:
    a, spool = leased_spool(tmp_path, coordinator)
    spool.keep_outcome(TrialOutcome(TrialState.FINISHED, exit_code=0))
    assert deliver_leftovers(coordinator, tmp_path, "another") == 0
    assert coordinator.store.get_trial(a.trial_id).state is TrialState.RUNNING


class Unreachable:
    """A coordinator that cannot be reached for its first ``n`` metric reports."""

    def __init__(self, inner: Coordinator, n: int) -> None:
        self.inner, self.n, self.calls = inner, n, 0

    def report_metrics(self, trial_id, lease_id, pts):
        self.calls += 1
        if self.calls <= self.n:
            raise ConnectionRefusedError("coordinator down")
        return self.inner.report_metrics(trial_id, lease_id, pts)

    def heartbeat(self, trial_id, lease_id, *, interrupted=None):
        return self.inner.heartbeat(trial_id, lease_id, interrupted=interrupted)


def test_reporter_on_a_spool_delivers_each_point_once_after_an_outage(tmp_path: Path, coordinator) -> None:
    a, spool = leased_spool(tmp_path, coordinator)
    client = Unreachable(coordinator, 3)
    now = [0.0]
    reporter = TrialReporter(
        client,
        a,
        clock=lambda: now[0],
        report_interval=0.1,
        heartbeat_interval=1.0,
        max_backoff=1.0,
        queue=spool,
    )
    for s in range(6):
        reporter.add(points(range(s, s + 1)))
        now[0] += 2.0  # past any backoff
        reporter.pump()
    reporter.send_all()
    assert client.calls > 3 and spool.pending == 0
    history = coordinator.store.get_trial(a.trial_id, with_history=True).history or ()
    assert sorted(p.seq for p in history) == list(range(6))


class LoggingMeanwhile:
    """The coordinator, while a trial logs a point during each of its metric reports (a function
    trial logging every few milliseconds, faster than a report's round trip)."""

    def __init__(self, coordinator: Coordinator, spool: Spool) -> None:
        self.coordinator = coordinator
        self.spool = spool
        self.reports = 0
        self.logging = True

    def report_metrics(self, trial_id: int, lease_id: str, batch: list[MetricPoint]):  # noqa: ANN201
        self.reports += 1
        assert self.reports < 50, "the reports never end while the trial logs"
        if self.logging:
            self.spool.append(points(range(100 + self.reports, 101 + self.reports)))
        return self.coordinator.report_metrics(trial_id, lease_id, batch)


def test_a_stop_reaches_a_trial_that_logs_faster_than_its_reports_go(tmp_path: Path, coordinator) -> None:
    a, spool = leased_spool(tmp_path, coordinator)
    spool.append(points(range(3)))
    coordinator.store.request_stop(a.trial_id, "hyperband: worse than the threshold")
    client = LoggingMeanwhile(coordinator, spool)
    reporter = TrialReporter(
        client,  # type: ignore[arg-type]
        a,
        clock=lambda: 0.0,
        report_interval=0.0,
        heartbeat_interval=1.0,
        queue=spool,
        max_batch=2,
    )
    directive = reporter.pump()
    assert directive is not None and directive.stop, directive
    assert directive.reason == "hyperband: worse than the threshold"
    assert client.reports == 1, "the stop is passed on at the first reply that says it"
    client.logging = False  # the trial stopped: its end sends the rest
    reporter.send_all()
    assert spool.pending == 0


def test_backoff_doubles_is_capped_and_jittered() -> None:
    import random

    rng = random.Random(1)
    delays = [backoff_delay(n, base=0.5, cap=4.0, rng=rng) for n in range(1, 9)]
    for n, d in enumerate(delays, start=1):
        ceiling = min(0.5 * 2 ** (n - 1), 4.0)
        assert ceiling / 2 <= d <= ceiling
    assert len({round(d, 6) for d in delays[4:]}) > 1  # capped ones still differ


def test_the_reporters_summary_is_the_value_the_trial_records(tmp_path: Path, coordinator) -> None:
    """Steps logged out of order (MLflow allows it): the progress line shows the value at the
    highest step, the one the store keeps as the trial's value."""
    a, spool = leased_spool(tmp_path, coordinator)
    reporter = reporter_on(coordinator, a, spool)
    reporter.add(
        [MetricPoint("acc", 30.0, step=0, seq=0, time=0.0), MetricPoint("acc", 3.0, step=9, seq=1, time=1.0)]
    )
    reporter.add([MetricPoint("acc", 20.0, step=5, seq=2, time=2.0)])
    reporter.send_all()
    (trial,) = coordinator.trials(a.sweep_id)
    assert reporter.summary == {"acc": 3.0} == dict(trial.summary)


def test_a_reporters_backoff_never_outlasts_a_third_of_the_lease(tmp_path: Path, coordinator) -> None:
    """A restarted server gives running trials one lease: retries must reach it before it runs out."""
    a, spool = leased_spool(tmp_path, coordinator)  # a 60 s lease
    reporter = TrialReporter(
        coordinator,
        a,
        clock=lambda: 0.0,
        report_interval=0.5,
        heartbeat_interval=1.0,
        max_backoff=300.0,
        queue=spool,
    )
    delays = [reporter.record_failure(OSError("down")) for _ in range(30)]
    assert max(delays) <= 20.0 and delays[-1] > 10.0  # jittered between half and all of the cap


def test_a_reporter_says_when_its_failure_changes_not_each_time(
    tmp_path: Path, coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    # A server killed, then started again on another store: refused, then "no such trial".
    a, spool = leased_spool(tmp_path, coordinator)
    reporter = TrialReporter(
        coordinator, a, clock=lambda: 0.0, report_interval=0.5, heartbeat_interval=1.0, queue=spool
    )
    with caplog.at_level("DEBUG", logger="sweeper.agents.reporting"):
        for exc in [ConnectionRefusedError("refused")] * 3 + [TrialNotFoundError("no trial 7")] * 3:
            reporter.record_failure(exc)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2 and "ConnectionRefusedError" in warned[0], warned
    assert "TrialNotFoundError: no trial 7) (a coordinator that does not know this trial" in warned[1]


def test_a_server_that_refuses_the_interruption_note_still_gets_heartbeats(tmp_path: Path) -> None:
    """An agent newer than its server (which refuses fields it does not know, 422) must not keep
    retrying the note, or its heartbeats stop and the lease runs out. A note the server refuses
    as malformed stands in for one it does not know."""
    from server_helpers import start_server

    server = start_server(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "server")
    try:
        client = server.client()
        sweep = client.create_sweep(parse_sweep({"method": "grid", "parameters": {"x": {"values": [1]}}}))
        a = client.next_trial(sweep.id, INFO)
        assert isinstance(a, Assignment)
        now = [0.0]
        reporter = TrialReporter(client, a, clock=lambda: now[0], report_interval=0.1, heartbeat_interval=1.0)
        assert reporter.pump(interrupted="not a note") is not None  # refused, then a plain heartbeat
        now[0] += 1.5
        assert reporter.pump(interrupted="not a note") is not None  # a heartbeat that is due, once more
        assert client.trials(sweep.id)[0].stop_reason is None
    finally:
        server.stop()
