"""``sweeper.trial_timeout`` stops a trial that runs too long; ``sweeper.stall_timeout`` fails one that
goes quiet (no metric, no output) for too long. The agent enforces both, also over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import SCRIPTS, run_and_list
from server_helpers import serving
from sweeper.agents.limits import TrialLimits

from sweeper.protocol import AgentInfo, Assignment
from sweeper.spec import SpecError, parse_sweep


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_time_limit_counts_from_the_start_and_activity_resets_the_stall_limit(tmp_path: Path) -> None:
    out = tmp_path / "stdout.log"
    clock = Clock()
    limits = TrialLimits(20.0, 3.0, [out], clock=clock)
    clock.now += 2.5
    assert limits.check(logged=False) is None
    out.write_text("a line\n")  # printing is activity
    clock.now += 2.5
    assert limits.check(logged=False) is None
    clock.now += 2.5
    assert limits.check(logged=True) is None  # so is a logged metric
    clock.now += 2.9
    assert limits.check(logged=False) is None and not limits.stalled
    clock.now += 0.2
    assert limits.check(logged=False) == "stalled: nothing logged or printed for 3s (sweeper.stall_timeout)"
    assert limits.stalled
    only_time = TrialLimits(7200.0, None, [out], clock=clock)
    clock.now += 7200.5
    assert only_time.check(logged=True) == "time limit: ran longer than 2h (sweeper.trial_timeout)"
    assert not only_time.stalled


def _sweep(**options: object) -> dict:
    return {
        "method": "grid",
        "program": str(SCRIPTS / "limits_trial.py"),
        "metric": {"name": "loss"},
        "parameters": {"mode": {"values": ["slow"]}},
        "sweeper": {"max_retries": 0, **options},
    }


@pytest.mark.slow
def test_a_trial_over_its_time_limit_is_stopped_and_keeps_what_it_logged(tmp_path: Path) -> None:
    _, trials = run_and_list(tmp_path, _sweep(trial_timeout="2s"), "--grace", "2")
    (trial,) = trials.values()
    assert trial["state"] == "stopped"
    assert trial["stop_reason"] == "time limit: ran longer than 2s (sweeper.trial_timeout)"
    assert len(trial["curves"]["loss"]) >= 3 and trial["metrics"]["loss"] < 1.0


@pytest.mark.slow
def test_a_quiet_trial_fails_as_stalled_while_one_that_prints_runs_on(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # the agent asks for it where a stall limit is set
    sweep = _sweep(stall_timeout=1.5)
    sweep["parameters"]["mode"] = {"values": ["hang", "chatty"]}
    _, trials = run_and_list(tmp_path, sweep, "--grace", "2", "--max-failures", "0")
    by_mode = {t["config"]["mode"]: t for t in trials.values()}
    assert by_mode["hang"]["state"] == "failed"
    assert by_mode["hang"]["stderr_tail"].endswith(
        "sweeper: stalled: nothing logged or printed for 1.5s (sweeper.stall_timeout)"
    )
    assert by_mode["chatty"]["state"] == "finished"  # 3 s of printing, no metric until the end


def test_limits_are_durations_with_their_key_path_when_wrong() -> None:
    spec = parse_sweep(_sweep(trial_timeout="1.5h", stall_timeout=90))
    assert (spec.options.trial_timeout, spec.options.stall_timeout) == (5400.0, 90.0)
    spec = parse_sweep(_sweep(trial_timeout="3600", stall_timeout="1d"))
    assert (spec.options.trial_timeout, spec.options.stall_timeout) == (3600.0, 86400.0)
    with pytest.raises(SpecError) as caught:
        parse_sweep(_sweep(trial_timeout="soon", stall_timeout=-5))
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("sweeper.trial_timeout", "expected a duration such as 3600, '90s', '30m', '2h' or '1d', got 'soon'"),
        (
            "sweeper.stall_timeout",
            "expected a duration such as 3600, '90s', '30m', '2h' or '1d' above 0, got -5",
        ),
    ]


def test_the_limits_reach_an_agent_over_http(tmp_path: Path, sqlite_store_url: str) -> None:
    with serving(sqlite_store_url, tmp_path / "server") as server:
        client = server.client()
        sweep_id = client.create_sweep(parse_sweep(_sweep(trial_timeout="2h", stall_timeout="10m"))).id
        got = client.next_trial(sweep_id, AgentInfo(name="a", host="h"))
    assert isinstance(got, Assignment)
    assert (got.time_limit, got.stall_limit) == (7200.0, 600.0)
