"""Remote agents end to end: a real ``sweeper server`` on 127.0.0.1, real ``sweeper agent`` processes,
real trial processes, and the faults a fleet meets: an agent killed, the server killed, the network gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import restored_from
from server_helpers import ServerProcess, agent_argv, e2e_grid, start_server, without_sweeper_settings

from sweeper.spec import parse_sweep
from sweeper.trials import SweepState, Trial, TrialState

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).parent / "scripts"
SWEEPER = str(Path(sys.executable).parent / "sweeper")
SHORT_LEASE = ("--lease-seconds", "3", "--log-level", "warning")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.05)


def short_lease_server(tmp_path: Path, stopped_at_end: list) -> ServerProcess:
    """A server on SQLite with 3 s leases, stopped at the test's end."""
    server = start_server(f"sqlite:///{tmp_path / 'sweeper.db'}", tmp_path / "server", extra_args=SHORT_LEASE)
    stopped_at_end.append(server)
    return server


class AgentProcess:
    """``sweeper agent`` in a folder of its own, as on a machine of its own."""

    def __init__(self, server: ServerProcess, sweep_id: str, folder: Path, *args: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.sweep_id = sweep_id
        self.process = subprocess.Popen(
            agent_argv(server.url, sweep_id, "--max-backoff", "1", *args),
            env=without_sweeper_settings(),
            cwd=folder,
            stdout=open(folder / "agent.out", "w"),  # noqa: SIM115 - closed with the process
            stderr=open(folder / "agent.err", "w"),  # noqa: SIM115
        )

    def output(self) -> str:
        return (self.folder / "agent.out").read_text() + (self.folder / "agent.err").read_text()

    def wait(self, timeout: float = 120.0) -> int:
        return self.process.wait(timeout)

    def trial_dirs(self) -> list[Path]:
        return sorted((self.folder / ".sweeper" / "trials" / self.sweep_id).glob("*"))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def trials_of(server: ServerProcess, sweep_id: str, history: bool = False) -> list[Trial]:
    return server.client().trials(sweep_id, with_history=history)


def configs(trials: list[Trial], *keys: str) -> Counter:
    return Counter(tuple(t.config[k] for k in keys) for t in trials)


@pytest.fixture
def stopped_at_end() -> list:
    """Servers and agents a test started, stopped however the test ends."""
    started: list = []
    yield started
    for thing in reversed(started):
        thing.kill()


def grid_of_20_with_three_agents(db_url: str, tmp_path: Path, started: list) -> None:
    server = start_server(db_url, tmp_path / "server", extra_args=SHORT_LEASE)
    started.append(server)
    sweep_id = e2e_grid(server, {"x": {"values": [1, 2, 3, 4]}, "y": {"values": [10, 20, 30, 40, 50]}})
    agents = [
        AgentProcess(server, sweep_id, tmp_path / "a1", "--slots", "2"),
        AgentProcess(server, sweep_id, tmp_path / "a2"),
        AgentProcess(server, sweep_id, tmp_path / "a3"),
    ]
    started.extend(agents)
    for agent in agents:
        assert agent.wait() == 0, agent.output()
        assert f"sweep {sweep_id} is complete" in agent.output().strip().splitlines()[-1]
    trials = trials_of(server, sweep_id)
    assert len(trials) == 20 and {t.state for t in trials} == {TrialState.FINISHED}
    assert set(configs(trials, "x", "y").values()) == {1}
    assert server.client().get_sweep(sweep_id).state is SweepState.FINISHED
    assert len({t.agent for t in trials}) >= 3  # the work was shared (the two slots count apart)


def test_three_agents_one_with_two_slots_run_a_grid_of_20_once_each(
    tmp_path: Path, stopped_at_end: list
) -> None:
    grid_of_20_with_three_agents(f"sqlite:///{tmp_path / 'sweeper.db'}", tmp_path, stopped_at_end)


@pytest.mark.postgres
def test_three_agents_over_postgresql(postgres_store_url: str, tmp_path: Path, stopped_at_end: list) -> None:
    grid_of_20_with_three_agents(postgres_store_url, tmp_path, stopped_at_end)


def _trial_pids(pid_dir: Path) -> list[int]:
    return [int(p.read_text().split()[0]) for p in pid_dir.glob("*.pids")]


def test_an_agent_killed_mid_trial_loses_it_and_its_config_runs_once_more(
    tmp_path: Path, stopped_at_end: list
) -> None:
    server = short_lease_server(tmp_path, stopped_at_end)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    sweep_id = e2e_grid(
        server,
        {
            "x": {"values": [1, 2, 3]},
            "epochs": {"value": 4},
            "sleep": {"value": 0.3},
            "pid_dir": {"value": str(pid_dir)},
        },
    )
    doomed = AgentProcess(server, sweep_id, tmp_path / "doomed")
    stopped_at_end.append(doomed)
    wait_for(lambda: bool(_trial_pids(pid_dir)), "the first trial to start")
    victim = _trial_pids(pid_dir)[0]
    # The machine is gone: the agent and everything its trial started die at once.
    os.kill(doomed.process.pid, signal.SIGKILL)
    os.killpg(victim, signal.SIGKILL)
    doomed.process.wait(30)

    survivor = AgentProcess(server, sweep_id, tmp_path / "survivor")
    stopped_at_end.append(survivor)
    assert survivor.wait() == 0, survivor.output()
    trials = trials_of(server, sweep_id)
    states = Counter(t.state for t in trials)
    assert states == {TrialState.FINISHED: 3, TrialState.LOST: 1}, trials
    lost = next(t for t in trials if t.state is TrialState.LOST)
    rerun = [t for t in trials if t.retry_of == lost.number]
    assert len(rerun) == 1 and rerun[0].config == lost.config and rerun[0].state is TrialState.FINISHED
    assert f"trial {rerun[0].number} started" in survivor.output()
    assert f"(retry of trial {lost.number})" in survivor.output()  # it says why the trial runs again
    assert configs([t for t in trials if t.state is TrialState.FINISHED], "x") == {(1,): 1, (2,): 1, (3,): 1}


def test_an_agent_told_to_stop_gives_its_trials_back_and_they_run_again(
    tmp_path: Path, stopped_at_end: list
) -> None:
    """SIGTERM (preemption, `docker stop`): the server takes the cut-short trials as lost at once,
    without waiting for their leases, and another agent runs their configurations to the end."""
    server = start_server(f"sqlite:///{tmp_path / 'sweeper.db'}", tmp_path / "server")
    stopped_at_end.append(server)
    sweep_id = e2e_grid(server, {"x": {"values": [1, 2]}, "epochs": {"value": 20}, "sleep": {"value": 0.2}})
    first = AgentProcess(server, sweep_id, tmp_path / "first", "--slots", "2")
    stopped_at_end.append(first)
    wait_for(lambda: len(first.trial_dirs()) == 2, "both trials to start")
    time.sleep(1.0)
    first.process.send_signal(signal.SIGTERM)
    assert first.wait() == 130, first.output()
    assert {t.state for t in trials_of(server, sweep_id)} == {TrialState.LOST}  # not left running
    second = AgentProcess(server, sweep_id, tmp_path / "second")
    stopped_at_end.append(second)
    assert second.wait() == 0, second.output()
    trials = trials_of(server, sweep_id)
    finished = [t for t in trials if t.state is TrialState.FINISHED]
    assert configs(finished, "x") == {(1,): 1, (2,): 1} and len(trials) == 4


def test_the_server_killed_mid_sweep_and_restarted_loses_nothing_and_repeats_nothing(
    tmp_path: Path, stopped_at_end: list
) -> None:
    server = short_lease_server(tmp_path, stopped_at_end)
    sweep_id = e2e_grid(
        server, {"x": {"values": [1, 2, 3, 4, 5, 6]}, "epochs": {"value": 4}, "sleep": {"value": 0.25}}
    )
    # The default --max-backoff (30 s), ten times the lease.
    agents = [AgentProcess(server, sweep_id, tmp_path / f"a{i}", "--max-backoff", "30") for i in (1, 2)]
    stopped_at_end.extend(agents)
    wait_for(lambda: sum(len(a.trial_dirs()) for a in agents) >= 3, "a few trials to start")
    finished_before = {t.number: t for t in trials_of(server, sweep_id) if t.state is TrialState.FINISHED}
    server.kill()
    # Down for twice the lease: the agents' retries back off meanwhile, yet come back within the
    # lease the restarted server gives their trials, or those trials would be lost.
    time.sleep(6.0)
    server = server.restart()
    stopped_at_end.append(server)
    for agent in agents:
        assert agent.wait() == 0, agent.output()
    trials = trials_of(server, sweep_id, history=True)
    assert {t.state for t in trials} == {TrialState.FINISHED}, trials
    assert configs(trials, "x") == {(x,): 1 for x in range(1, 7)}
    for number, before in finished_before.items():
        after = next(t for t in trials if t.number == number)
        assert after.state is TrialState.FINISHED and after.summary == before.summary
    for t in trials:  # every epoch's score arrived, once
        assert [p.seq for p in t.history or () if p.name == "score"] == [0, 1, 2, 3]
    # A trial that ended meanwhile said what its agent was waiting for, so the agent did not look hung.
    waits = [
        line
        for a in agents
        for line in a.output().splitlines()
        if "the coordinator cannot take it yet" in line
    ]
    assert waits and all("retrying until it answers; it is kept in " in line for line in waits), waits


def _logged(trial_dir: Path) -> Counter:
    lines = (trial_dir / "metrics.jsonl").read_text().splitlines()
    return Counter(
        (rec["seq"], name, value) for rec in map(json.loads, lines) for name, value in rec["metrics"].items()
    )


def test_agents_cut_off_for_ten_seconds_deliver_every_metric_once_afterwards(
    tmp_path: Path, stopped_at_end: list
) -> None:
    # The lease outlasts the outage: agents cut off for less than a lease keep their trials.
    server = start_server(
        f"sqlite:///{tmp_path / 'sweeper.db'}", tmp_path / "server", extra_args=("--lease-seconds", "30")
    )
    stopped_at_end.append(server)
    sweep_id = e2e_grid(
        server, {"x": {"values": [1, 2, 3, 4]}, "epochs": {"value": 8}, "sleep": {"value": 0.5}}
    )
    agents = [AgentProcess(server, sweep_id, tmp_path / f"a{i}", "--slots", "2") for i in (1, 2)]
    stopped_at_end.extend(agents)
    wait_for(lambda: sum(len(a.trial_dirs()) for a in agents) >= 4, "every trial to start")
    os.kill(server.process.pid, signal.SIGSTOP)  # no answers for 10 s, as if the network were cut
    try:
        time.sleep(10)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    for agent in agents:
        assert agent.wait() == 0, agent.output()
    trials = {t.number: t for t in trials_of(server, sweep_id, history=True)}
    assert {t.state for t in trials.values()} == {TrialState.FINISHED}
    seen = 0
    for agent in agents:
        for trial_dir in agent.trial_dirs():
            stored = Counter((p.seq, p.name, p.value) for p in trials[int(trial_dir.name)].history or ())
            assert stored == _logged(trial_dir), trial_dir  # each logged value once, nothing else
            seen += 1
    assert seen == len(trials) == 4


def test_a_server_stopped_for_longer_than_a_lease_keeps_the_trials_its_agents_kept_running(
    tmp_path: Path, stopped_at_end: list
) -> None:
    # Ctrl-Z on the server, a VM paused, a laptop's lid closed: nobody answered the agents, so their
    # leases ran out only on the server's clock. When it runs again, their trials go on.
    server = short_lease_server(tmp_path, stopped_at_end)
    sweep_id = e2e_grid(
        server, {"x": {"values": [1, 2, 3]}, "epochs": {"value": 24}, "sleep": {"value": 0.5}}
    )
    agent = AgentProcess(server, sweep_id, tmp_path / "agent", "--slots", "3")
    stopped_at_end.append(agent)
    wait_for(lambda: len(agent.trial_dirs()) == 3, "every trial to start")
    time.sleep(1.0)
    os.kill(server.process.pid, signal.SIGSTOP)  # 8 s: more than two leases of 3 s
    try:
        time.sleep(8)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert agent.wait() == 0, agent.output()
    trials = trials_of(server, sweep_id)
    assert sorted((t.config["x"], t.state) for t in trials) == [(x, TrialState.FINISHED) for x in (1, 2, 3)]
    assert "did not run for" in server.log(), server.log()


def _published_step(shared: Path, sweep_id: str, number: int) -> int:
    try:
        return json.loads((shared / sweep_id / str(number) / "state.json").read_text())["step"]
    except (OSError, ValueError):
        return -1


def test_population_members_lost_with_their_agent_go_on_from_their_own_last_checkpoint(
    tmp_path: Path, stopped_at_end: list
) -> None:
    server = short_lease_server(tmp_path, stopped_at_end)
    shared, pid_dir = tmp_path / "shared", tmp_path / "pids"  # shared: a network file system
    pid_dir.mkdir()
    raw = {
        "method": "pbt",
        "program": str(SCRIPTS / "pbt_trial.py"),
        "metric": {"name": "score", "goal": "maximize"},
        "parameters": {
            "lr": {"values": [0.05, 0.1]},
            "steps": {"value": 16},
            "sleep": {"value": 0.25},
            "pid_dir": {"value": str(pid_dir)},
        },
        # No exploits: each member trains on its own, so all it can go on from is its own checkpoint.
        "sweeper": {
            "seed": 1,
            "pbt": {"population": 2, "perturbation_interval": 99, "checkpoints": str(shared)},
        },
    }
    sweep_id = server.client().create_sweep(parse_sweep(raw)).id
    doomed = AgentProcess(server, sweep_id, tmp_path / "doomed", "--slots", "2")
    stopped_at_end.append(doomed)
    wait_for(lambda: min(_published_step(shared, sweep_id, n) for n in (1, 2)) >= 4, "two members at step 4")
    published = {n: _published_step(shared, sweep_id, n) for n in (1, 2)}
    # The machine is gone: the agent and its trials die at once.
    os.kill(doomed.process.pid, signal.SIGKILL)
    for pids in pid_dir.glob("*.pids"):
        os.killpg(int(pids.read_text()), signal.SIGKILL)
    doomed.process.wait(30)

    survivor = AgentProcess(server, sweep_id, tmp_path / "survivor", "--slots", "2")
    stopped_at_end.append(survivor)
    assert survivor.wait() == 0, survivor.output()
    trials = trials_of(server, sweep_id, history=True)
    assert Counter(t.state for t in trials) == {TrialState.LOST: 2, TrialState.FINISHED: 2}, trials
    retries = {t.retry_of: t for t in trials if t.retry_of is not None}
    assert set(retries) == {1, 2}
    for lost, retry in retries.items():
        saved = restored_from(survivor.folder / ".sweeper" / "trials" / sweep_id / str(retry.number))
        assert saved["trial"] == lost and saved["step"] >= published[lost]
        # It went on from there, and trained to the end.
        assert [step for step, _ in retry.curve("score")] == list(range(saved["step"] + 1, 16))


def test_a_trial_whose_agent_is_killed_while_it_ends_an_interruption_runs_again_unspent(
    tmp_path: Path, stopped_at_end: list
) -> None:
    """Slurm or ``docker stop``: SIGTERM, then SIGKILL before the script has saved and exited.
    The agent says at once that it is interrupting the trial, so the lease that then runs out
    leaves it interrupted: its configuration runs again although no retry is allowed."""
    server = short_lease_server(tmp_path, stopped_at_end)
    started, pid_file = tmp_path / "started", tmp_path / "trial.pid"
    script = tmp_path / "slow_save.sh"
    script.write_text(
        f"trap 'sleep 30; exit 0' TERM\n"  # saving takes longer than the scheduler waits
        f"[ -e {started} ] && exit 0\n"
        f"touch {started}; echo $$ > {pid_file}\n"
        "sleep 60 & wait\n"
    )
    raw = {
        "method": "grid",
        "program": str(script),
        "command": ["/bin/sh", "${program}"],
        "parameters": {"x": {"values": [1]}},
        "sweeper": {"max_retries": 0},
    }
    sweep_id = server.client().create_sweep(parse_sweep(raw)).id
    doomed = AgentProcess(server, sweep_id, tmp_path / "doomed", "--grace", "60")
    stopped_at_end.append(doomed)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", "the trial to start")
    os.kill(doomed.process.pid, signal.SIGTERM)

    def told() -> bool:  # while the script still saves
        (trial,) = trials_of(server, sweep_id)
        return trial.state is TrialState.RUNNING and "interrupted" in (trial.stop_reason or "")

    wait_for(told, "the agent to say it is interrupting the trial", timeout=50)
    os.kill(doomed.process.pid, signal.SIGKILL)
    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    doomed.process.wait(30)

    survivor = AgentProcess(server, sweep_id, tmp_path / "survivor")
    stopped_at_end.append(survivor)
    assert survivor.wait() == 0, survivor.output()
    first, retry = sorted(trials_of(server, sweep_id), key=lambda t: t.number)
    assert first.state is TrialState.LOST and (first.stop_reason or "").startswith(
        "interrupted (SIGTERM); lease"
    )
    assert retry.retry_of == first.number and retry.state is TrialState.FINISHED
