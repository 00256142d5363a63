"""An agent keeps its trial's lease while it blocks on something slower than the lease: hooks that
fetch or upload (checkpoints, artifacts), and a trial given its grace period to shut down. Real
coordinator, real SQLite store, real trial processes; the lease is 1 s."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from sweeper.agents import Agent, TrialAbandoned, TrialStarted

from sweeper.coordinator import Coordinator
from sweeper.protocol import AgentInfo, Assignment, TrialOutcome, interrupted_reason
from sweeper.spec import parse_sweep
from sweeper.store import open_store
from sweeper.trials import SweepState, Trial, TrialState

SCRIPTS = Path(__file__).parent / "scripts"
LEASE_S = 1.0
SLOW_S = 3.0  # three leases


class SlowHook:
    """Takes SLOW_S at the start or at the end of a trial, as a large checkpoint would."""

    def __init__(self, *, at_start: bool = False, at_end: bool = False) -> None:
        self.at_start, self.at_end = at_start, at_end
        self.coordinator: Coordinator | None = None  # the one the agent reports to, once it runs

    def on_start(
        self, assignment: Assignment, trial_dir: Any, env: Mapping[str, str], stopping: Any
    ) -> dict[str, str]:
        if self.at_start:
            time.sleep(SLOW_S)
        return {}

    def on_metrics(self, assignment: Assignment, records: Any) -> None:
        pass

    def on_end(self, assignment: Assignment, outcome: TrialOutcome, trial_dir: Any) -> None:
        if self.at_end:
            time.sleep(SLOW_S)


def _run(
    tmp_path: Path,
    program: Path,
    hook: SlowHook,
    *,
    grace: float = 10.0,
    during: Any = None,
    events: list[Any] | None = None,
    function: Any = None,
) -> list[Trial]:
    with open_store(f"sqlite:///{tmp_path / 'sweeper.db'}") as store:
        coordinator = Coordinator(store, lease_seconds=LEASE_S)
        hook.coordinator = coordinator
        raw = {"method": "grid", "program": str(program), "parameters": {"x": {"values": [1]}}}
        sweep = coordinator.create_sweep(parse_sweep(raw))
        agent = Agent(
            coordinator,
            sweep.id,
            info=AgentInfo(name="slow", host="localhost"),
            workdir=tmp_path,
            count=1,
            hooks=[hook],
            grace_period=grace,
            on_event=events.append if events is not None else None,
            function=function,
        )
        runner = threading.Thread(target=agent.run)
        runner.start()
        if during is not None:
            during(coordinator, sweep.id, agent)
        runner.join(60)
        assert not runner.is_alive()
        time.sleep(LEASE_S * 1.5)  # anything still leased has run out by now ...
        coordinator.expire_leases()  # ... and is counted lost here
        return store.list_trials(sweep.id)


def test_a_slow_hook_at_the_end_does_not_cost_a_finished_trial_its_lease(tmp_path: Path) -> None:
    found = _run(tmp_path, SCRIPTS / "trial.py", SlowHook(at_end=True))
    assert [(t.number, t.state) for t in found] == [(1, TrialState.FINISHED)]


def test_a_slow_hook_at_the_start_does_not_cost_the_trial_its_lease(tmp_path: Path) -> None:
    found = _run(tmp_path, SCRIPTS / "trial.py", SlowHook(at_start=True))
    assert [(t.number, t.state) for t in found] == [(1, TrialState.FINISHED)]


def test_a_slow_hook_at_the_start_of_a_function_trial_does_not_cost_it_its_lease(tmp_path: Path) -> None:
    found = _run(tmp_path, SCRIPTS / "trial.py", SlowHook(at_start=True), function=lambda: None)
    assert [(t.number, t.state) for t in found] == [(1, TrialState.FINISHED)]


def test_a_trial_slow_to_shut_down_is_recorded_stopped_not_lost(tmp_path: Path) -> None:
    program = tmp_path / "slow_stop.py"
    program.write_text(
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (time.sleep({SLOW_S}), sys.exit(0)))\n"
        "open('started', 'w').close()\n"
        "time.sleep(60)\n"
    )

    def cancel_once_started(coordinator: Coordinator, sweep_id: str, agent: Agent) -> None:
        deadline = time.monotonic() + 30
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        coordinator.set_sweep_state(sweep_id, SweepState.CANCELLED)

    found = _run(tmp_path, program, SlowHook(), during=cancel_once_started)
    assert [(t.number, t.state) for t in found] == [(1, TrialState.STOPPED)]


def test_a_lease_lost_during_the_start_hooks_means_the_script_never_starts(tmp_path: Path) -> None:
    program = tmp_path / "quick.py"
    program.write_text("print('started')\n")

    class LosesTheLease(SlowHook):
        def on_start(
            self, assignment: Assignment, trial_dir: Any, env: Mapping[str, str], stopping: Any
        ) -> dict[str, str]:
            assert self.coordinator is not None
            self.coordinator.store.expire_leases(now=time.time() + 3600)  # as if it had run out
            time.sleep(1.0)  # the keeper's heartbeat hears of it meanwhile
            return {}

    events: list[Any] = []
    found = _run(tmp_path, program, LosesTheLease(), events=events)
    assert [(t.number, t.state) for t in found][:1] == [(1, TrialState.LOST)]
    assert not any(isinstance(e, TrialStarted) for e in events), events
    assert [type(e) for e in events] == [TrialAbandoned]


class WaitsUntilStopping(SlowHook):
    """Waits at the start for something that does not come (a tracker's run, from a server that
    hangs) until the trial is stopping; records whether the stop cut its wait short."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()
        self.cut_short = False

    def on_start(
        self, assignment: Assignment, trial_dir: Any, env: Mapping[str, str], stopping: Any
    ) -> dict[str, str]:
        self.waiting.set()
        self.cut_short = stopping.wait(120)
        return {}


@pytest.mark.parametrize("stopped_by", ["agent", "coordinator"])
@pytest.mark.parametrize("runs_as", ["command", "function"])
def test_a_stop_during_the_start_hooks_ends_their_wait_and_the_trial_never_starts(
    tmp_path: Path, stopped_by: str, runs_as: str
) -> None:
    program = tmp_path / "marks.py"
    program.write_text("open('started', 'w').close()\n")
    called: list[int] = []
    hook = WaitsUntilStopping()

    def stop_while_the_hook_waits(coordinator: Coordinator, sweep_id: str, agent: Agent) -> None:
        assert hook.waiting.wait(30)
        if stopped_by == "agent":  # Ctrl-C, SIGTERM from a scheduler
            agent.stop(interrupted_reason("SIGTERM"))
        else:
            coordinator.set_sweep_state(sweep_id, SweepState.CANCELLED)

    events: list[Any] = []
    function = (lambda: called.append(1)) if runs_as == "function" else None
    found = _run(tmp_path, program, hook, during=stop_while_the_hook_waits, events=events, function=function)
    assert hook.cut_short
    assert not any(isinstance(e, TrialStarted) for e in events), events
    assert not (tmp_path / "started").exists() and not called
    # The agent's stop leaves the trial to run again; the coordinator's stands.
    expected = TrialState.LOST if stopped_by == "agent" else TrialState.STOPPED
    assert [(t.number, t.state) for t in found] == [(1, expected)]


def test_hooks_after_a_stop_heard_during_the_start_are_not_started(tmp_path: Path) -> None:
    """A stop heard while one hook starts (a checkpoint being fetched) spares the hooks after it:
    no tracker run is made for a trial that will not run."""
    from sweeper.agents.hooks import TrialHooks

    started: list[str] = []
    stopping = threading.Event()

    class Hook(SlowHook):
        def __init__(self, name: str, stops: bool) -> None:
            super().__init__()
            self.name, self.stops = name, stops

        def on_start(
            self, assignment: Assignment, trial_dir: Any, env: Mapping[str, str], stopping: Any
        ) -> dict[str, str]:
            started.append(self.name)
            if self.stops:
                stopping.set()  # as the agent's stop does while this hook works
            return {self.name: "1"}

    hooks = TrialHooks([Hook("fetch", stops=True), Hook("tracker", stops=False)])
    assert hooks.start(None, tmp_path, {}, stopping) == {"fetch": "1"}  # type: ignore[arg-type]
    assert started == ["fetch"]


def test_a_hook_written_before_the_stop_argument_still_starts(tmp_path: Path) -> None:
    from sweeper.agents.hooks import TrialHooks

    class Older(SlowHook):
        def on_start(self, assignment: Assignment, trial_dir: Any, env: Mapping[str, str]) -> dict[str, str]:  # type: ignore[override]
            return {"OLDER": "1"}

    assert TrialHooks([Older()]).start(None, tmp_path, {}) == {"OLDER": "1"}  # type: ignore[arg-type]
