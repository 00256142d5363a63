"""Population-based training: the spec, exploit and explore on crafted histories, the coordinator,
checkpoints, and ``sweeper run`` end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_support import restored_from, run_and_list, toy_pbt_sweep
from sweeper.agents.checkpoints import CheckpointHook
from sweeper.agents.trialdir import TrialDir

import sweeper
from sweeper.checkpoints import SNAPSHOTS_FOLDER, checkpoint_location, fetch, publish
from sweeper.checkpoints.retention import unneeded_checkpoints
from sweeper.coordinator import Coordinator
from sweeper.planning import find_retry, may_run_again
from sweeper.protocol import AgentInfo, Assignment, TrialOutcome
from sweeper.run import Run
from sweeper.spec import SpecError, load_sweep_file, parse_sweep
from sweeper.spec.model import Pbt
from sweeper.stopping import ExploitDecision, PbtRule, TrialCurve, build_rule, exploited_trial
from sweeper.store import open_store
from sweeper.strategies import SuggestionKind, strategy_class
from sweeper.strategies.pbt import explore, perturb
from sweeper.trials import MetricPoint, Trial, TrialState

SCRIPTS = Path(__file__).parent / "scripts"
SWEEPER = str(Path(sys.executable).parent / "sweeper")
AGENT = AgentInfo(name="host:1:0", host="host")


def pbt_sweep(**pbt: object) -> dict:
    return {
        "method": "pbt",
        "program": "train.py",
        "metric": {"name": "acc", "goal": "maximize"},
        "parameters": {
            "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1.0},
            "opt": {"values": ["sgd", "adam", "adamw"]},
            "layers": {"min": 1, "max": 8},
            "epochs": {"value": 20},
        },
        "sweeper": {"pbt": {"population": 4, "perturbation_interval": 2, **pbt}},
    }


# --- the spec ------------------------------------------------------------------------------------


def test_defaults_and_every_key() -> None:
    assert parse_sweep({**pbt_sweep(), "sweeper": {"pbt": {}}}).options.pbt == Pbt()
    spec = parse_sweep(
        pbt_sweep(
            quantile=0.5, resample_probability=0, perturbation_factors=[1.25, 0.75], checkpoints="s3://b/c"
        )
    )
    assert spec.options.pbt == Pbt(4, 2, 0.5, 0, (0.75, 1.25), "s3://b/c")
    assert parse_sweep({**pbt_sweep(), "sweeper": {}}).options.pbt is None  # method pbt: defaults


@pytest.mark.parametrize(
    ("pbt", "path", "message"),
    [
        ({"population": 1}, "sweeper.pbt.population", "expected an integer >= 2, got 1"),
        (
            {"perturbation_interval": 0},
            "sweeper.pbt.perturbation_interval",
            "expected an integer >= 1, got 0",
        ),
        ({"quantile": 0.6}, "sweeper.pbt.quantile", "expected a number with 0 < q <= 0.5, got 0.6"),
        ({"quantile": 0}, "sweeper.pbt.quantile", "expected a number with 0 < q <= 0.5, got 0"),
        ({"resample_probability": 1.5}, "sweeper.pbt.resample_probability", "from 0 to 1, got 1.5"),
        ({"perturbation_factors": [1.1, 1.2]}, "sweeper.pbt.perturbation_factors", "one below 1 and one"),
        ({"perturbation_factors": 0.8}, "sweeper.pbt.perturbation_factors", "expected two numbers > 0"),
        ({"checkpoints": ""}, "sweeper.pbt.checkpoints", "expected a folder or a URL, got ''"),
        ({"checkpoints": "s3://"}, "sweeper.pbt.checkpoints", "expected a URL such as s3://bucket"),
        ({"checkpoints": 3}, "sweeper.pbt.checkpoints", "expected a string, got 3"),
        ({"populaton": 4}, "sweeper.pbt.populaton", "population"),
    ],
)
def test_each_bad_setting_is_named(pbt: dict, path: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_sweep(pbt_sweep(**pbt))
    found = {p.path: p.message for p in caught.value.problems}
    assert path in found and message in found[path], found


def test_a_checkpoint_url_fsspec_cannot_open_is_refused_in_a_sweep_file_not_in_a_stored_sweep(
    tmp_path: Path,
) -> None:
    raw = pbt_sweep(checkpoints="nosuchproto://b/c")
    (tmp_path / "pbt.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as caught:
        load_sweep_file(tmp_path / "pbt.yaml")
    assert [(p.path, p.message[:38]) for p in caught.value.problems] == [
        ("sweeper.pbt.checkpoints", "no checkpoint store for nosuchproto://")
    ]
    # A stored sweep reads back on a machine that lacks the agents' fsspec plugin.
    assert parse_sweep(raw).options.pbt.checkpoints == "nosuchproto://b/c"
    # With another problem in the file, both are listed at once; the Python API checks it too.
    (tmp_path / "two.yaml").write_text(yaml.safe_dump({**raw, "method": "pbtt"}))
    with pytest.raises(SpecError) as caught:
        load_sweep_file(tmp_path / "two.yaml")
    assert sorted(p.path for p in caught.value.problems) == ["method", "sweeper.pbt.checkpoints"]
    with pytest.raises(SpecError, match="no checkpoint store for nosuchproto://"):
        sweeper.sweep(raw, db=f"sqlite:///{tmp_path / 'api.db'}")


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"metric": None}, "metric", "method pbt ranks the population by it"),
        ({"early_terminate": {"type": "asha"}}, "early_terminate", "stops and restarts members itself"),
        (
            {"parameters": {"epochs": {"value": 3}}},
            "parameters",
            "at least one parameter that is not a constant",
        ),
        ({"method": "random"}, "sweeper.pbt", "only method pbt runs a population"),
    ],
)
def test_settings_pbt_cannot_use_are_refused(change: dict, path: str, message: str) -> None:
    raw = {k: v for k, v in {**pbt_sweep(), **change}.items() if v is not None}
    with pytest.raises(SpecError) as caught:
        parse_sweep(raw)
    assert any(p.path == path and message in p.message for p in caught.value.problems), caught.value.problems


# --- exploit: the rule on crafted histories ------------------------------------------------------


def member_trial(
    number: int, member: int, *values: float, start: float = 0.0, **fields: object
) -> TrialCurve:
    points = tuple(MetricPoint("acc", v, step=i, seq=i, time=start + i) for i, v in enumerate(values))
    record = Trial(
        id=number,
        sweep_id="sw",
        number=number,
        config={},
        state=TrialState.RUNNING,
        created_at=0.0,
        member=member,
        **fields,  # type: ignore[arg-type]
    )
    return TrialCurve(number, points, record)


def rule(**pbt: object) -> PbtRule:
    found = build_rule(parse_sweep(pbt_sweep(**pbt)))
    assert isinstance(found, PbtRule)
    return found


def test_a_member_in_the_bottom_quantile_copies_a_top_member() -> None:
    curves = [
        member_trial(1, 0, 0.5, 0.9),
        member_trial(2, 1, 0.4, 0.7),
        member_trial(3, 2, 0.3, 0.6),
        member_trial(4, 3, 0.2, 0.1, start=0.5),  # its 2nd value comes after everyone's
    ]
    decision = rule().decide(curves[3], curves)
    assert isinstance(decision, ExploitDecision)
    assert decision.reason == (
        "pbt: exploit trial 1 (member 0, acc=0.9, rank 1 of 4): at iteration 2 member 3 acc=0.1 "
        "ranks 4 of 4, in the bottom 25%"
    )
    assert (decision.donor_trial, decision.donor_member, decision.rank, decision.competitors) == (1, 0, 4, 4)
    assert exploited_trial(decision.reason) == 1
    for good in curves[:3]:  # the others are above the bottom quantile (or had only rivals' older values)
        assert rule().decide(good, curves) is None


def test_a_donor_that_has_finished_is_not_copied() -> None:
    # Member 0 ran to its end first (one agent, say): its checkpoint has no epochs left to give,
    # and the strategy would not restart member 1 from it, so member 1 is not stopped for it.
    ran = member_trial(1, 0, 0.5, 0.9)
    assert ran.trial is not None
    late = member_trial(2, 1, 0.2, 0.1, start=10.0)
    decision = rule(population=2, quantile=0.5).decide(late, [ran, late])
    assert isinstance(decision, ExploitDecision) and decision.donor_trial == 1  # still training
    finished = dataclasses.replace(ran, trial=dataclasses.replace(ran.trial, state=TrialState.FINISHED))
    assert rule(population=2, quantile=0.5).decide(late, [finished, late]) is None


def test_only_values_logged_before_the_checkpoint_iteration_count() -> None:
    late_rival = member_trial(2, 1, 0.9, 0.95, start=100.0)  # logged after member 0 reached iteration 2
    mine = member_trial(1, 0, 0.1, 0.2)
    assert rule().decide(mine, [mine, late_rival]) is None  # alone at its iteration 2: nothing to copy
    # A restarted coordinator sees the same history and decides the same, however often it asks.
    assert rule().decide(mine, [mine, late_rival]) == rule().decide(mine, [mine, late_rival])


def test_decisions_wait_for_the_perturbation_interval_and_use_each_members_latest_trial() -> None:
    old = member_trial(1, 0, 0.9, 0.9, 0.9)
    new_of_member_0 = member_trial(5, 0, 0.05, start=2.5)  # member 0 restarted: its latest value counts
    weak = member_trial(2, 1, 0.5, 0.5, 0.5, start=1.0)
    strong = member_trial(3, 2, 0.8, 0.8, start=0.1)
    assert rule(perturbation_interval=3).decide(strong, [old, new_of_member_0, weak, strong]) is None
    decision = rule(perturbation_interval=3, quantile=0.5).decide(weak, [old, new_of_member_0, weak, strong])
    assert decision is None  # member 0's latest value (0.05) is worse than member 1's at iteration 3
    worst = member_trial(6, 3, 0.01, 0.01, 0.01, start=3.0)
    decision = rule(perturbation_interval=3).decide(worst, [old, new_of_member_0, weak, strong, worst])
    assert isinstance(decision, ExploitDecision) and decision.donor_trial == 3  # the top quarter: member 2


def test_a_donor_is_one_of_its_members_two_newest_trials_with_values() -> None:
    # The weak trial's iteration 1 is judged at a point in time (10) before member 0's trials 3
    # and 5 logged anything (an agent's clock behind, or points sent after an outage), so member 0
    # ranks by trial 1's value. Trial 1 is older than member 0's two newest with values: its
    # checkpoint may be gone, so it is passed over, and no donor is left.
    oldest = member_trial(1, 0, 0.9)
    newer = [member_trial(3, 0, 0.8, start=50.0), member_trial(5, 0, 0.7, start=60.0)]
    weak = member_trial(2, 1, 0.1, start=10.0)
    assert rule(perturbation_interval=1, quantile=0.5).decide(weak, [oldest, weak]) is not None
    assert rule(perturbation_interval=1, quantile=0.5).decide(weak, [oldest, *newer, weak]) is None
    # With one newer trial with values, trial 1 still stands for member 0.
    decision = rule(perturbation_interval=1, quantile=0.5).decide(weak, [oldest, newer[0], weak])
    assert isinstance(decision, ExploitDecision) and decision.donor_trial == 1
    nan_only = member_trial(4, 0, float("nan"), start=55.0)  # a NaN does not count as a value
    decision = rule(perturbation_interval=1, quantile=0.5).decide(weak, [oldest, newer[0], nan_only, weak])
    assert isinstance(decision, ExploitDecision) and decision.donor_trial == 1


def test_a_member_replaced_before_it_failed_or_went_silent_is_not_run_again() -> None:
    # An exploited trial whose agent dies before it stops: its slot already has a new trial, so
    # the coordinator must not run the old configuration again beside it.
    exploit = "pbt: exploit trial 1 (member 0, acc=0.9, rank 1 of 2): ..."
    replaced = Trial(
        id=2, sweep_id="sw", number=2, config={"lr": 0.1}, state=TrialState.LOST, created_at=0.0,
        member=1, stop_requested=exploit,
    )  # fmt: skip
    assert find_retry([replaced], max_retries=1) is None
    assert may_run_again([replaced], max_retries=1) == []
    silent = dataclasses.replace(replaced, stop_requested=None)
    assert may_run_again([silent], max_retries=1) == [silent]
    retry = find_retry([silent], max_retries=1)
    assert retry is not None and (retry.retry_of, retry.member) == (2, 1)


def test_members_with_the_same_configuration_are_retried_each_for_its_own() -> None:
    # Two exploits of one donor may both pick x0.8: the same configuration in two members.
    def trial(number: int, member: int, state: TrialState) -> Trial:
        return Trial(id=number, sweep_id="sw", number=number, config={"lr": 0.08}, state=state,
                     created_at=0.0, member=member)  # fmt: skip

    running, failed = trial(1, 0, TrialState.RUNNING), trial(2, 1, TrialState.FAILED)
    assert may_run_again([running, failed], max_retries=1) == [failed]
    both_lost = [trial(1, 0, TrialState.LOST), trial(2, 1, TrialState.LOST)]
    assert sorted(t.member for t in may_run_again(both_lost, max_retries=1)) == [0, 1]


def test_a_minimised_metric_ranks_the_other_way() -> None:
    curves = [member_trial(1, 0, 0.9, 0.9, start=1.0), member_trial(2, 1, 0.1, 0.1)]
    assert rule().decide(curves[0], curves) is None  # maximised: 0.9 beats 0.1
    minimised = build_rule(parse_sweep({**pbt_sweep(), "metric": {"name": "acc", "goal": "minimize"}}))
    assert isinstance(minimised, PbtRule)
    decision = minimised.decide(curves[0], curves)
    assert isinstance(decision, ExploitDecision) and decision.donor_trial == 2 and decision.value == 0.9


# --- explore -------------------------------------------------------------------------------------


def test_explore_moves_a_dict_valued_category_to_a_neighbour() -> None:
    raw = pbt_sweep(resample_probability=0)
    raw["parameters"] = {"opt": {"values": [{"lr": 1}, {"lr": 2}, {"lr": 3}]}}
    spec = parse_sweep(raw)
    moved = {
        explore(spec, {"opt": {"lr": 1}}, spec.options.pbt, random.Random(k))["opt"]["lr"] for k in range(50)
    }
    assert moved == {2}  # the first value's one neighbour


def test_explore_perturbs_continuous_values_and_moves_categories_to_a_neighbour() -> None:
    spec = parse_sweep(pbt_sweep(resample_probability=0))
    config = spec.options.pbt
    assert config is not None
    lr, opt, layers, epochs = spec.parameters
    rng = random.Random(0)
    assert {round(perturb(lr, 0.1, config, rng), 12) for _ in range(50)} == {0.08, 0.12}
    assert {perturb(opt, "adam", config, rng) for _ in range(50)} == {"sgd", "adamw"}
    assert {perturb(opt, "sgd", config, rng) for _ in range(20)} == {"adam"}  # an end has one neighbour
    assert {perturb(layers, 1, config, rng) for _ in range(20)} == {1, 2}  # integers move by at least one
    assert perturb(lr, 1.0, config, random.Random(1)) <= 1.0  # clipped to the space
    assert perturb(epochs, 20, config, rng) == 20
    resampled = explore(
        spec, {"lr": 0.1, "opt": "sgd", "layers": 4, "epochs": 20}, Pbt(resample_probability=1), rng
    )
    assert 1e-4 <= resampled["lr"] <= 1.0 and resampled["epochs"] == 20


# --- the strategy: slots, replacements, the end ---------------------------------------------------


def test_the_strategy_fills_the_population_then_replaces_exploited_members_then_ends() -> None:
    spec = parse_sweep(pbt_sweep())
    strategy = strategy_class("pbt")(spec)
    trials: list[Trial] = []
    for n in range(4):
        s = strategy.suggest(trials, random.Random(n))
        assert s.kind is SuggestionKind.RUN and s.member == n and s.restore_from is None
        trials.append(Trial(n + 1, "sw", n + 1, s.config, TrialState.RUNNING, 0.0, member=n))
    waiting = strategy.suggest(trials, random.Random(9))
    assert waiting.kind is SuggestionKind.WAIT and "4 of 4" in waiting.reason
    reason = "pbt: exploit trial 1 (member 0, acc=0.9, rank 1 of 4): at iteration 2 member 3 ..."
    trials[3] = dataclasses.replace(trials[3], stop_requested=reason)  # still running: pending stop
    again = strategy.suggest(trials, random.Random(10))
    assert again.kind is SuggestionKind.RUN and again.member == 3
    assert again.restore_from == checkpoint_location(".sweeper/checkpoints", "sw", 1)
    assert again.config["epochs"] == 20 and again.config != trials[0].config
    trials.append(
        Trial(5, "sw", 5, again.config, TrialState.RUNNING, 0.0, member=3, restore_from=again.restore_from)
    )
    assert strategy.suggest(trials, random.Random(11)).kind is SuggestionKind.WAIT
    trials = [
        dataclasses.replace(t, state=TrialState.FINISHED if t.number != 4 else TrialState.STOPPED)
        for t in trials
    ]
    done = strategy.suggest(trials, random.Random(12))
    assert done.kind is SuggestionKind.DONE and "population of 4" in done.reason


def donor_and_exploited(donor: int, exploited: int) -> list[Trial]:
    """Two members: trial 1 (member 0) and trial 2 (member 1); ``exploited`` was stopped to copy
    ``donor``, which still trains."""
    reason = f"pbt: exploit trial {donor} (member {donor - 1}, acc=0.9, rank 1 of 2): at iteration 2 ..."
    return [
        Trial(n, "sw", n, {"lr": n / 10}, TrialState.RUNNING, 0.0, member=n - 1)
        if n != exploited
        else Trial(n, "sw", n, {"lr": n / 10}, TrialState.STOPPED, 0.0, member=n - 1, stop_reason=reason)
        for n in (1, 2)
    ]


def test_a_member_exploited_in_favour_of_a_donor_that_has_finished_is_not_restarted() -> None:
    # The donor's checkpoint is its last epoch's: a restart from it would have nothing to train.
    strategy = strategy_class("pbt")(parse_sweep(pbt_sweep(population=2)))
    trials = donor_and_exploited(donor=1, exploited=2)
    restart = strategy.suggest(trials, random.Random(0))  # donor still training: restart from it
    assert restart.kind is SuggestionKind.RUN and restart.member == 1 and restart.restore_from
    trials[0] = dataclasses.replace(trials[0], state=TrialState.FINISHED)
    done = strategy.suggest(trials, random.Random(0))
    assert done.kind is SuggestionKind.DONE and "population of 2" in done.reason


def test_an_exploited_member_restarts_before_a_new_member_starts() -> None:
    # Its donor is training now; by the time a new member had started, it might have finished.
    strategy = strategy_class("pbt")(parse_sweep(pbt_sweep(population=3)))
    trials = donor_and_exploited(donor=2, exploited=1)
    first = strategy.suggest(trials, random.Random(0))
    assert first.kind is SuggestionKind.RUN and first.member == 0 and first.restore_from
    trials.append(Trial(3, "sw", 3, first.config, TrialState.RUNNING, 0.0, member=0))
    then = strategy.suggest(trials, random.Random(1))
    assert then.kind is SuggestionKind.RUN and then.member == 2 and then.restore_from is None


# --- the coordinator: decisions on metric arrival, assignments with checkpoints -------------------


def test_the_coordinator_stops_a_weak_member_and_restarts_its_slot_from_a_donor(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    clock = [1000.0]
    coordinator = Coordinator(store, clock=lambda: clock[0])
    sweep = coordinator.create_sweep(
        parse_sweep(
            {**pbt_sweep(), "sweeper": {"seed": 3, "pbt": {"population": 2, "perturbation_interval": 2}}}
        )
    )
    a, b = (coordinator.next_trial(sweep.id, AGENT) for _ in range(2))
    assert isinstance(a, Assignment) and isinstance(b, Assignment)
    assert a.checkpoint_to == f".sweeper/checkpoints/{sweep.id}/1" and a.restore_from is None
    waiting = coordinator.next_trial(sweep.id, AGENT)
    assert not isinstance(waiting, Assignment)
    for step, (good, bad) in enumerate([(0.5, 0.2), (0.6, 0.1)]):
        assert not coordinator.report_metrics(
            a.trial_id, a.lease_id, [MetricPoint("acc", good, step, step, step)]
        ).stop
        directive = coordinator.report_metrics(
            b.trial_id, b.lease_id, [MetricPoint("acc", bad, step, step, step + 0.5)]
        )
    assert (
        directive.stop
        and directive.reason is not None
        and directive.reason.startswith(
            "pbt: exploit trial 1 (member 0, acc=0.6, rank 1 of 2): "
            "at iteration 2 member 1 acc=0.1 ranks 2 of 2"
        )
    )
    restarted = coordinator.next_trial(sweep.id, AGENT)
    assert isinstance(restarted, Assignment)
    assert restarted.restore_from == a.checkpoint_to and restarted.checkpoint_to.endswith("/3")
    assert store.get_trial(restarted.trial_id).member == 1
    # A second coordinator on the same store (a restart) decides the same from the stored history.
    again = Coordinator(store, clock=lambda: clock[0])
    coordinator.finish_trial(
        b.trial_id, b.lease_id, TrialOutcome(TrialState.STOPPED, stop_reason=directive.reason)
    )
    assert not isinstance(again.next_trial(sweep.id, AGENT), Assignment)  # both slots are training
    store.close()


# --- checkpoints and the in-script API --------------------------------------------------------------


@pytest.mark.parametrize("root", ["shared", "file://ABS", "memory://ckpt"])
def test_a_checkpoint_folder_is_published_and_fetched(tmp_path: Path, root: str) -> None:
    root = root.replace("ABS", str(tmp_path / "abs"))
    source = tmp_path / "trial" / "checkpoint"
    (source / "sub").mkdir(parents=True)
    (source / "state.json").write_text('{"step": 4}')
    (source / "sub" / "w.bin").write_bytes(b"\x00\x01")
    where = checkpoint_location(root, "sw", 7)
    assert fetch(where, tmp_path / "nothing", base=tmp_path) is False
    assert publish(source, where, base=tmp_path) is True
    (source / "state.json").write_text('{"step": 8}')
    publish(source, where, base=tmp_path)  # replaces what was there
    into = tmp_path / "restore"
    assert fetch(where, into, base=tmp_path) is True
    assert json.loads((into / "state.json").read_text()) == {"step": 8}
    assert (into / "sub" / "w.bin").read_bytes() == b"\x00\x01"
    assert publish(tmp_path / "empty", where, base=tmp_path) is False


def test_run_checkpoint_dir_and_restore_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trial = Run(config={}, id="x", sweep_id="sw", trial_number=2, dir=tmp_path / "t")
    assert trial.checkpoint_dir == tmp_path / "t" / "checkpoint" and trial.checkpoint_dir.is_dir()
    assert trial.restore_from is None
    (tmp_path / "t" / "restore").mkdir()
    assert trial.restore_from == tmp_path / "t" / "restore"
    monkeypatch.setenv("SWEEPER_RESTORE_FROM", str(tmp_path / "t" / "restore"))
    monkeypatch.chdir(tmp_path)
    alone = Run(config={}, id="y")
    assert (
        alone.checkpoint_dir == tmp_path / "checkpoint" and alone.restore_from == tmp_path / "t" / "restore"
    )


def test_a_checkpoint_being_rewritten_is_never_published_half_written(tmp_path: Path) -> None:
    # The script rewrites one file in place, in pieces, as torch.save does, and logs after each save.
    # The agent publishes while it runs, as it does when metrics arrive: every copy is whole.
    trial_dir = TrialDir(tmp_path / ".sweeper" / "trials" / "sw" / "1")
    trial_dir.path.mkdir(parents=True)
    trial_dir.config_path.write_text(json.dumps({"steps": 40}))
    assignment = Assignment(
        sweep_id="sw", trial_id=1, trial_number=1, lease_id="l", lease_seconds=30.0, config={"steps": 40},
        command=[], program=None, metric_name="step_done", checkpoint_to="published/sw/1",
    )  # fmt: skip
    hook = CheckpointHook()
    env = {
        **os.environ,
        **hook.on_start(assignment, trial_dir, {}),
        "SWEEPER_CONFIG_PATH": str(trial_dir.config_path),
        "SWEEPER_SWEEP_ID": "sw",
        "SWEEPER_TRIAL_NUMBER": "1",
        "SWEEPER_TRIAL_DIR": str(trial_dir.path),
        "SWEEPER_METRICS_PATH": str(trial_dir.metrics_path),
    }
    script = subprocess.Popen([sys.executable, str(SCRIPTS / "torn_checkpoint_trial.py")], env=env)
    seen, read = set(), 0
    while script.poll() is None or not seen:
        lines = trial_dir.metrics_path.read_text().splitlines() if trial_dir.metrics_path.exists() else []
        if len(lines) == read:
            continue
        hook.on_metrics(assignment, [json.loads(line) for line in lines[read:]])  # as the agent's tailer does
        read = len(lines)
        if fetch("published/sw/1", tmp_path / "copy", base=tmp_path):
            data = (tmp_path / "copy" / "ckpt.bin").read_bytes()
            assert len(data) == 64 * 1024 and len(set(data)) == 1, f"a half-written checkpoint: {set(data)}"
            seen.add(data[0])
    assert script.wait() == 0
    hook.on_end(assignment, TrialOutcome(TrialState.FINISHED, exit_code=0), trial_dir)
    assert fetch("published/sw/1", tmp_path / "copy", base=tmp_path)
    assert set((tmp_path / "copy" / "ckpt.bin").read_bytes()) == {39}  # the last save, published at the end
    assert len(seen) > 1 and not (trial_dir.path / SNAPSHOTS_FOLDER).exists()


# --- end to end ------------------------------------------------------------------------------------


def test_sweeper_run_says_when_the_population_cannot_train_together(tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(toy_pbt_sweep(), sort_keys=False))
    ran = subprocess.run(
        [SWEEPER, "run", "sweep.yaml", "--count", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "note: a population of 2 with 1 trial(s) at a time trains in waves" in ran.stdout, ran.stdout


@pytest.mark.slow
def test_sweeper_run_restarts_weak_members_from_a_donors_checkpoint(tmp_path: Path) -> None:
    sweep = toy_pbt_sweep(quantile=0.5)
    sweep_id, trials = run_and_list(tmp_path, sweep, "--agents", "2", timeout=120)
    exploited = [t for t in trials.values() if (t["stop_reason"] or "").startswith("pbt: exploit trial")]
    assert exploited, [(t["number"], t["state"], t["stop_reason"]) for t in trials.values()]
    restarted = [t for t in trials.values() if t["restore_from"]]
    assert restarted and all(t["member"] is not None for t in trials.values())
    continued = []
    for trial in restarted:
        donor = trials[int(trial["restore_from"].rstrip("/").rsplit("/", 1)[1])]
        steps = [step for step, _ in trial["curves"].get("score", [])]
        saved = restored_from(tmp_path / ".sweeper" / "trials" / sweep_id / str(trial["number"]))
        assert saved["trial"] == donor["number"]
        assert saved["step"] in [step for step, _ in donor["curves"]["score"]]
        if not steps:  # it copied a donor that had already run every step: nothing left to do
            assert saved["step"] == 11 and trial["state"] == "finished"
            continue
        continued.append(trial["number"])
        assert steps[0] == saved["step"] + 1 > 0  # it went on from the donor's step, not from 0
        # Its first w continues the donor's w at that step with its own lr.
        donor_w = dict((s, v) for s, v in donor["curves"]["w"])[saved["step"]]
        lr = trial["config"]["lr"]
        assert trial["curves"]["w"][0][1] == pytest.approx(donor_w - lr * 2 * (donor_w - 3.0))
    assert continued, "no restarted member had steps left to run"
    assert {t["state"] for t in trials.values()} <= {"finished", "stopped"}
    published = tmp_path / ".sweeper" / "checkpoints" / sweep_id
    saved_something = {n for n, t in trials.items() if t["curves"].get("score")}
    kept = {int(p.name) for p in published.iterdir() if p.name.isdigit()}
    assert kept <= saved_something
    # Removed only what nothing could restore from, and never a member's model.
    with open_store(f"sqlite:///{tmp_path / '.sweeper' / 'sweeper.db'}") as store:
        history = store.list_trials(sweep_id)
    listed = unneeded_checkpoints(history, ".sweeper/checkpoints", "score")
    unneeded = {int(p.rsplit("/", 1)[1]) for p in listed}
    assert saved_something - kept <= unneeded
    for member in {t["member"] for t in trials.values()}:
        assert max(n for n, t in trials.items() if t["member"] == member and n in saved_something) in kept
    # Published, a trial's checkpoint is kept once: its folder keeps no copy, nor the one it started from.
    for number in trials:
        folder = tmp_path / ".sweeper" / "trials" / sweep_id / str(number)
        assert not [p.name for p in folder.iterdir() if p.name.startswith(("checkpoint", "restore"))]


def test_snapshots_do_not_pile_up_while_the_checkpoint_store_refuses_them(tmp_path: Path) -> None:
    # The store is a path under a regular file: every publish fails, as with a store that is down.
    (tmp_path / "not-a-folder").write_text("")
    trial_dir = TrialDir(tmp_path / ".sweeper" / "trials" / "sw" / "1")
    trial_dir.path.mkdir(parents=True)
    unwritable = str(tmp_path / "not-a-folder" / "sw" / "1")
    assignment = Assignment(
        sweep_id="sw", trial_id=1, trial_number=1, lease_id="l", lease_seconds=30.0, config={},
        command=[], program=None, metric_name="loss", checkpoint_to=unwritable,
    )  # fmt: skip
    hook = CheckpointHook()
    hook.on_start(assignment, trial_dir, {})
    snapshots = trial_dir.path / SNAPSHOTS_FOLDER
    for step in range(1, 6):  # as sweeper.log does after each save: a snapshot, then the record
        (trial_dir.path / "checkpoint" / "ckpt.bin").write_bytes(bytes([step]) * 1024)  # the save
        (snapshots / f"{step:08d}").mkdir()
        (snapshots / f"{step:08d}" / "ckpt.bin").write_bytes(bytes([step]) * 1024)
        hook.on_metrics(assignment, [{"loss": 1.0 / step, "_step": step}])
        deadline = time.monotonic() + 10
        while len(list(snapshots.iterdir())) > 1:  # the publisher runs on a thread of its own
            assert time.monotonic() < deadline, sorted(p.name for p in snapshots.iterdir())
            time.sleep(0.02)
    assert [p.name for p in snapshots.iterdir()] == ["00000005"]
    hook.on_end(assignment, TrialOutcome(TrialState.FINISHED, exit_code=0), trial_dir)
    assert not snapshots.exists()
    # Never published, the trial's own folder is the one copy of its checkpoint: it stays.
    assert (trial_dir.path / "checkpoint" / "ckpt.bin").read_bytes() == bytes([5]) * 1024


def _pbt_assignment(checkpoint_to: str) -> Assignment:
    return Assignment(
        sweep_id="sw", trial_id=1, trial_number=1, lease_id="l", lease_seconds=30.0, config={},
        command=[], program=None, metric_name="loss", checkpoint_to=checkpoint_to,
    )  # fmt: skip


def test_a_file_marked_in_the_checkpoint_folder_is_there_for_the_trackers_at_the_end(tmp_path: Path) -> None:
    """The trackers' hook ends before the checkpoint hook clears the folder, and the clearing leaves
    the marked files: real trackers upload them later, from a thread of their own."""
    from sweeper.agents.hooks import TrialHooks

    seen: list[tuple[Path, bytes]] = []

    class Tracker:  # what TrackerHook.on_end reads: the files the script marked, if still there
        def on_start(self, assignment, trial_dir, env, stopping):
            return {}

        def on_metrics(self, assignment, records):
            pass

        def on_end(self, assignment, outcome, trial_dir):
            seen.extend((path, path.read_bytes()) for path in trial_dir.marked_artifacts())

    trial_dir = TrialDir(tmp_path / ".sweeper" / "trials" / "sw" / "1")
    trial_dir.path.mkdir(parents=True)
    assignment = _pbt_assignment("published/sw/1")
    hooks = TrialHooks([CheckpointHook(), Tracker()])
    env = hooks.start(assignment, trial_dir, {})
    model = Path(env["SWEEPER_CHECKPOINT_DIR"]) / "model.pt"  # run.checkpoint_dir / "model.pt"
    model.write_bytes(b"weights")
    (model.parent / "optimizer.pt").write_bytes(b"state")  # saved, not marked
    with open(trial_dir.artifacts_path, "a") as fh:  # run.log_artifact(model)
        fh.write(json.dumps({"path": str(model), "time": 0}) + "\n")
    hooks.end(assignment, TrialOutcome(TrialState.FINISHED, exit_code=0), trial_dir)
    assert seen == [(model, b"weights")]
    assert fetch("published/sw/1", tmp_path / "copy", base=tmp_path)  # published, then cleared locally
    assert (tmp_path / "copy" / "model.pt").read_bytes() == b"weights"
    assert [p.name for p in model.parent.iterdir()] == ["model.pt"]  # kept for a tracker still busy
    assert trial_dir.marked_artifacts() == (model,)


def test_a_stopped_trial_whose_checkpoint_was_not_published_keeps_its_last_whole_save(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")  # every publish fails
    trial_dir = TrialDir(tmp_path / ".sweeper" / "trials" / "sw" / "1")
    trial_dir.path.mkdir(parents=True)
    assignment = _pbt_assignment(str(tmp_path / "not-a-folder" / "sw" / "1"))
    hook = CheckpointHook()
    hook.on_start(assignment, trial_dir, {})
    live = trial_dir.path / "checkpoint"
    (live / "ckpt.bin").write_bytes(b"whole" * 100)
    snapshot = trial_dir.path / SNAPSHOTS_FOLDER / "00000001"
    snapshot.mkdir()
    (snapshot / "ckpt.bin").write_bytes(b"whole" * 100)  # what sweeper.log copied after that save
    (live / "ckpt.bin").write_bytes(b"torn")  # the next save, cut short by the stop
    hook.on_end(assignment, TrialOutcome(TrialState.STOPPED, exit_code=-15, stop_reason="pbt"), trial_dir)
    assert (live / "ckpt.bin").read_bytes() == b"whole" * 100
    assert not (trial_dir.path / SNAPSHOTS_FOLDER).exists()
