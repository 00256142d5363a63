"""A metric the coordinator refuses as invalid (HTTP 422) is left out with one warning; the rest of
each batch arrives exactly once, through an outage too, and the trial ends without waiting for it.

Real parts: a `sweeper server` subprocess (killed and restarted mid-trial), its HTTP client, and an
agent running a real trial script.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from process_support import left_by_a_dead_agent, wait_until
from sweeper.agents.events import TrialAbandoned, TrialEnded
from sweeper.agents.reporting import deliver_leftovers
from sweeper.agents.spool import Spool, leftover_spools

from sweeper.protocol import AgentInfo, Assignment, TrialOutcome
from sweeper.spec import parse_sweep
from sweeper.store import open_store
from sweeper.trials import MetricPoint, TrialState

pytest.importorskip("fastapi")
from server_helpers import one_trial_agent, start_server  # noqa: E402

BAD = "a_metric_name_far_too_long_" * 12  # over the coordinator's 256 characters
STEPS = 6

# Logs a good and a refused metric each step; at step 2 it waits until the test has killed the
# coordinator, so the later points are logged during the outage.
SCRIPT = f"""
import pathlib, time
import sweeper
run = sweeper.init({{"x": 1}})
here = pathlib.Path(str(run.dir))
for step in range({STEPS}):
    run.log({{"loss": 1.0 / (step + 1), {BAD!r}: float(step)}}, step=step)
    if step == 2:
        (here / "ready").write_text("1")
        while not (here / "go").exists():
            time.sleep(0.05)
"""


def test_a_refused_metric_is_left_out_and_the_rest_arrives_once_through_an_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    server = start_server(db, tmp_path / "server")
    events: list[object] = []
    try:
        sweep_id, agent = one_trial_agent(
            server,
            tmp_path,
            SCRIPT,
            name="refused-test",
            events=events,
            client_timeout=5.0,
            finish_timeout=60.0,  # a refused point retried until then would abandon the trial
        )
        caplog.set_level(logging.WARNING, logger="sweeper.agents")
        runner = threading.Thread(target=agent.run, daemon=True)
        runner.start()
        folder = tmp_path / ".sweeper" / "trials" / sweep_id / "1"
        assert wait_until(lambda: (folder / "ready").exists(), 60), "the script's first steps"
        server.kill()  # as a crash would: the agent's next reports fail to connect
        (folder / "go").write_text("1")
        assert wait_until(lambda: (folder / "finish.json").exists(), 60), (
            "the script to end during the outage"
        )
        server = start_server(db, tmp_path / "server", port=server.port)
        runner.join(120)
        assert not runner.is_alive()
        (trial,) = server.client().trials(sweep_id, with_history=True)
    finally:
        server.stop()

    assert not [e for e in events if isinstance(e, TrialAbandoned)], events
    assert [e.outcome.state for e in events if isinstance(e, TrialEnded)] == [TrialState.FINISHED]
    assert trial.state is TrialState.FINISHED
    assert [(p.name, p.step) for p in trial.history or ()] == [("loss", s) for s in range(STEPS)]
    warnings = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(warnings) == 1, warnings  # one line for the metric, however many points it had
    assert BAD[:40] in warnings[0] and "at most 256 characters" in warnings[0], warnings[0]


def test_leftovers_with_a_refused_point_deliver_the_rest_and_the_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What an earlier agent left on disk holds a point the coordinator refuses: the other points
    and the kept end state are still delivered, and the spool is done with."""
    server = start_server(f"sqlite:///{tmp_path / 'sweeper.db'}", tmp_path / "server")
    try:
        client = server.client()
        sweep_id = client.create_sweep(
            parse_sweep({"method": "grid", "program": "t.py", "parameters": {"x": {"values": [1]}}})
        ).id
        got = client.next_trial(sweep_id, AgentInfo(name="earlier", host="localhost"))
        assert isinstance(got, Assignment)
        folder = tmp_path / ".sweeper" / "trials" / sweep_id / str(got.trial_number)
        folder.mkdir(parents=True)
        spool = Spool.create(folder, got)
        left_by_a_dead_agent(spool)
        spool.append(
            MetricPoint(name, float(seq), seq, seq, 1_700_000_000.0 + seq)
            for seq in range(5)
            for name in (("loss", BAD) if seq == 2 else ("loss",))
        )
        spool.keep_outcome(TrialOutcome(TrialState.FINISHED, exit_code=0))

        with caplog.at_level(logging.WARNING, logger="sweeper.agents"):
            assert deliver_leftovers(client, tmp_path, sweep_id) == 1
        (trial,) = client.trials(sweep_id, with_history=True)
    finally:
        server.stop()
    assert trial.state is TrialState.FINISHED and trial.exit_code == 0
    assert [(p.name, p.seq) for p in trial.history or ()] == [("loss", s) for s in range(5)]
    assert list(leftover_spools(tmp_path)) == []
    assert [r.getMessage() for r in caplog.records if BAD[:40] in r.getMessage()], caplog.text


def test_the_embedded_coordinator_refuses_the_names_the_server_refuses(tmp_path: Path) -> None:
    """Without a server the same names are left out, with the same warning, so a sweep stores the
    same metrics whichever way its agents reach the coordinator."""
    program = tmp_path / "train.py"
    program.write_text(
        "import sweeper\nrun = sweeper.init()\n"
        f"run.log({{{BAD!r}: 1.0, 'new\\nline': 2.0, '': 3.0, 'loss': 0.5}})\n"
        "run.log({'loss': 0.25})\n"
    )
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"method: grid\nprogram: {program}\nparameters:\n  x: {{values: [1]}}\n")
    sweeper_cmd = str(Path(sys.executable).with_name("sweeper"))
    ran = subprocess.run(
        [sweeper_cmd, "run", str(sweep)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for why in ("at most 256 characters", "must not hold control characters", "must not be empty"):
        assert "left out: the coordinator refuses it as invalid" in ran.stderr and why in ran.stderr, (
            ran.stderr
        )
    with open_store(f"sqlite:///{tmp_path / '.sweeper' / 'sweeper.db'}") as store:
        (sweep_record,) = store.list_sweeps()
        (trial,) = store.list_trials(sweep_record.id, with_history=True)
    assert trial.state is TrialState.FINISHED
    assert [(p.name, p.step, p.value) for p in trial.history or ()] == [("loss", 0, 0.5), ("loss", 1, 0.25)]
