"""Population-based training removes the checkpoints nothing can restore from any more.

Which ones (:mod:`sweeper.checkpoints.retention`, a function of the history), that the coordinator
hands them to agents with each lease, and that an agent removes them from a folder, from an fsspec
store and (in tests/test_checkpoint_mlflow.py) from MLflow's artifact store.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from process_support import wait_until
from server_helpers import start_server
from sweeper.agents.checkpoints import CheckpointHook
from sweeper.agents.trialdir import TrialDir

from sweeper.checkpoints import checkpoint_location, fetch, publish
from sweeper.checkpoints.retention import resume_points, unneeded_checkpoints
from sweeper.coordinator import Coordinator
from sweeper.protocol import AgentInfo, Assignment, Directive, TrialOutcome
from sweeper.spec import SpecError, parse_sweep
from sweeper.store import open_store
from sweeper.trials import MetricPoint, Trial, TrialState

ROOT = "ckpt"
F, S, L, R = TrialState.FINISHED, TrialState.STOPPED, TrialState.LOST, TrialState.RUNNING


def trial(number: int, member: int, state: TrialState = S, *, score: float | None = 1.0, **extra) -> Trial:
    return Trial(
        id=number,
        sweep_id="sw",
        number=number,
        config={},
        state=state,
        created_at=0.0,
        member=member,
        summary={} if score is None else {"score": score},
        **extra,
    )


def at(number: int) -> str:
    return checkpoint_location(ROOT, "sw", number)


def unneeded(*trials: Trial) -> list[int]:
    return [int(p.rsplit("/", 1)[1]) for p in unneeded_checkpoints(trials, ROOT, "score")]


def test_each_member_keeps_its_two_newest_trials_with_values() -> None:
    member_0 = [trial(1, 0), trial(3, 0), trial(5, 0), trial(7, 0, R)]
    member_1 = [trial(2, 1), trial(4, 1, R)]
    assert unneeded(*member_0, *member_1) == [1, 3]


def test_trials_without_values_do_not_count_as_standing_for_their_member() -> None:
    # 5 lost before logging and 7 has logged nothing yet: 3 may still stand for member 0, and 1 too.
    history = [trial(1, 0), trial(3, 0), trial(5, 0, L, score=None), trial(7, 0, R, score=None)]
    assert unneeded(*history) == []
    assert unneeded(trial(0, 0), *history) == [0]


def test_a_checkpoint_stays_while_a_trial_restores_from_it_or_the_caller_needs_it() -> None:
    old = [trial(1, 0), trial(2, 0), trial(3, 0), trial(4, 0)]
    newest = [trial(8, 0), trial(9, 0, R)]
    assert unneeded(*old, *newest) == [1, 2, 3, 4]
    running = trial(10, 1, R, restore_from=at(1))
    ended = [trial(11, 2, L, restore_from=at(2)), trial(12, 3, F, restore_from=at(3))]
    # 11 and 12 are the newest of their members; 1 is where the running 10 started from.
    assert unneeded(*old, *newest, running, *ended) == [2, 3, 4]
    # The coordinator names what a retry would start from, and the sweep's best trial.
    history = [*old, *newest, running, *ended]
    assert unneeded_checkpoints(history, ROOT, "score", needed=[at(2), at(4)]) == [at(3)]


def test_a_nan_does_not_count_as_a_value_that_stands_for_a_member() -> None:
    # The ranking skips NaN: 4 is the member's newest trial it can see, so 4 stays.
    history = [trial(4, 1), trial(6, 1, score=float("nan")), trial(7, 1, score=float("nan")), trial(8, 1, R)]
    assert unneeded(*history) == []
    assert unneeded(trial(2, 1), trial(3, 1), *history) == [2, 3]


def test_the_donor_of_an_exploit_not_yet_carried_out_stays() -> None:
    member_0 = [trial(1, 0), trial(3, 0), trial(5, 0)]
    exploited = trial(6, 1, stop_requested="pbt: exploit trial 1 (member 0, score=1, rank 1 of 2): ...")
    assert unneeded(*member_0, trial(2, 1), trial(4, 1), exploited) == [2]


def test_running_trials_are_never_listed() -> None:
    assert unneeded(trial(1, 0, R), trial(2, 0, R), trial(3, 0, R)) == []


def test_a_running_retry_keeps_the_checkpoints_of_every_lost_attempt_it_may_resume_from() -> None:
    lost = [trial(3, 0, L), trial(5, 0, L, retry_of=3), trial(7, 0, L, retry_of=5)]
    # 5 and 7 stand for the member; 3 is kept too, as the retry falls back to it when they have none.
    assert unneeded(trial(1, 0), *lost, trial(9, 0, R, retry_of=7)) == [1]
    assert unneeded(trial(1, 0), *lost, trial(9, 0, F, retry_of=7)) == [1, 3, 5]
    failed = [trial(3, 0, L), trial(5, 0, TrialState.FAILED, retry_of=3)]  # a failure ends the chain
    assert resume_points(ROOT, {t.number: t for t in failed}, 5) == []
    assert resume_points(ROOT, {t.number: t for t in lost}, 7) == [at(7), at(5), at(3)]


# -- the coordinator hands them out ----------------------------------------------------------


def pbt_sweep(**pbt: object) -> dict:
    return {
        "method": "pbt",
        "program": "train.py",
        "metric": {"name": "score", "goal": "maximize"},
        "parameters": {"lr": {"min": 0.001, "max": 0.1}},
        "sweeper": {"seed": 3, "pbt": {"population": 2, "perturbation_interval": 1, "quantile": 0.5, **pbt}},
    }


def run_generations(api: Any, spec: dict, generations: int) -> list[Assignment]:
    """Two members take turns: the weaker reports below the other and is replaced from its
    checkpoint, then the replacement reports above everything. Every assignment handed out;
    ``api``: the coordinator, or a client of a ``sweeper server``."""
    agent = AgentInfo(name="a", host="h")
    sweep_id = api.create_sweep(parse_sweep(spec)).id
    given = [api.next_trial(sweep_id, agent) for _ in range(2)]
    assert all(isinstance(a, Assignment) for a in given)
    clock = itertools.count(1000)  # the points' own times order the exploit decisions
    steps: dict[int, int] = {}

    def report(a: Assignment, value: float) -> Directive:
        step = steps[a.trial_id] = steps.get(a.trial_id, -1) + 1
        point = MetricPoint("score", value, step=step, seq=step, time=float(next(clock)))
        return api.report_metrics(a.trial_id, a.lease_id, [point])

    best = 1.0
    report(given[0], best)
    members = {0: given[0], 1: given[1]}
    weak = 1
    for _ in range(generations):
        directive = report(members[weak], best - 0.5)  # below the other member's newest value
        assert directive.stop, directive
        stopped = TrialOutcome(TrialState.STOPPED, exit_code=143, stop_reason=directive.reason)
        api.finish_trial(members[weak].trial_id, members[weak].lease_id, stopped)
        replacement = api.next_trial(sweep_id, agent)
        assert isinstance(replacement, Assignment), replacement
        given.append(replacement)
        best += 1.0
        assert not report(replacement, best).stop
        members[weak] = replacement
        weak = 1 - weak
    return given


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    with open_store(f"sqlite:///{tmp_path / 'c.db'}") as store:
        yield Coordinator(store)


@pytest.mark.parametrize("over", ["coordinator", "http"])
def test_each_lease_of_a_pbt_sweep_names_the_checkpoints_nothing_needs(
    coordinator: Coordinator, tmp_path: Path, over: str
) -> None:
    if over == "coordinator":
        given = run_generations(coordinator, pbt_sweep(), generations=6)
    else:  # the same through a real server and the agents' client
        server = start_server(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "server")
        try:
            given = run_generations(server.client(), pbt_sweep(), generations=6)
        finally:
            server.stop()
    numbers = [[int(p.rsplit("/", 1)[1]) for p in a.discard_checkpoints] for a in given]
    # Trials 1 and 2 start members 0 and 1; then each generation replaces the weaker member's trial
    # with one restored from the other's newest: 3 from 1, 4 from 3, 5 from 4, ... 8 from 7. A lease
    # names every checkpoint older than its member's two newest with values that no running trial
    # restores from: 2 once trial 5 has reported, 1 once 6 has, 3 once 7 has.
    assert [a.trial_number for a in given] == [1, 2, 3, 4, 5, 6, 7, 8]
    restored = [a.restore_from and int(a.restore_from.rsplit("/", 1)[1]) for a in given]
    assert restored == [None, None, 1, 3, 4, 5, 6, 7]
    assert numbers == [[], [], [], [], [], [2], [1, 2], [1, 2, 3]]


def test_a_retry_resumes_from_its_lost_attempts_checkpoints_newest_first(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    clock = [1000.0]
    coordinator = Coordinator(store, clock=lambda: clock[0], lease_seconds=10)
    raw = pbt_sweep(perturbation_interval=100)
    raw["sweeper"]["max_retries"] = 3
    sweep = coordinator.create_sweep(parse_sweep(raw))

    def lease() -> Assignment:
        assignment = coordinator.next_trial(sweep.id, AgentInfo(name="a", host="h"))
        assert isinstance(assignment, Assignment), assignment
        return assignment

    def lose(assignment: Assignment) -> None:
        coordinator.report_metrics(
            assignment.trial_id, assignment.lease_id, [MetricPoint("score", 0.5, 0, 0, clock[0])]
        )
        clock[0] += 11
        coordinator.expire_leases()
        assert store.get_trial(assignment.trial_id).state is TrialState.LOST

    def where(assignment: Assignment) -> str:
        return checkpoint_location(".sweeper/checkpoints", sweep.id, assignment.trial_number)

    first, other = lease(), lease()
    assert first.resume_from == () and first.restore_from is None
    coordinator.finish_trial(other.trial_id, other.lease_id, TrialOutcome(TrialState.FINISHED))
    lose(first)
    second = lease()
    assert store.get_trial(second.trial_id).retry_of == first.trial_number
    assert second.resume_from == (where(first),) and second.restore_from is None
    assert where(first) not in second.discard_checkpoints
    lose(second)
    third = lease()
    assert third.resume_from == (where(second), where(first))  # the newest first
    assert not {where(first), where(second)} & set(third.discard_checkpoints)
    # A failed attempt's checkpoint may hold what made it crash: its retry starts where it did.
    coordinator.finish_trial(third.trial_id, third.lease_id, TrialOutcome(TrialState.FAILED, exit_code=1))
    fourth = lease()
    assert store.get_trial(fourth.trial_id).retry_of == third.trial_number
    assert fourth.resume_from == () and fourth.restore_from is None
    store.close()


def test_keep_checkpoints_all_keeps_every_one(coordinator: Coordinator) -> None:
    given = run_generations(coordinator, pbt_sweep(keep_checkpoints="all"), generations=6)
    assert [a.discard_checkpoints for a in given] == [()] * len(given)


def test_keep_checkpoints_takes_needed_or_all() -> None:
    with pytest.raises(SpecError) as caught:
        parse_sweep(pbt_sweep(keep_checkpoints="some"))
    assert "sweeper.pbt.keep_checkpoints: expected one of needed, all, got 'some'" in str(caught.value)


# -- agents remove them -------------------------------------------------------------------------


def published(tmp_path: Path, location: str, content: bytes) -> None:
    folder = tmp_path / "made" / content.hex()
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(content)
    assert publish(folder, location, base=tmp_path)


def removal_assignment(locations: list[str]) -> Assignment:
    return Assignment(
        sweep_id="sw", trial_id=9, trial_number=9, lease_id="l", lease_seconds=30.0, config={},
        command=[], program=None, metric_name="score", checkpoint_to=at(9), discard_checkpoints=locations,
    )  # fmt: skip


def wait_for(condition: Callable[[], bool], what: str) -> None:
    assert wait_until(condition), what


@pytest.mark.parametrize("store", ["folder", "fsspec"])
def test_an_agent_removes_the_checkpoints_its_assignment_names(tmp_path: Path, store: str) -> None:
    pytest.importorskip("fsspec") if store == "fsspec" else None
    root = ROOT if store == "folder" else f"memory://{tmp_path.name}/ckpt"
    doomed = [checkpoint_location(root, "sw", n) for n in (1, 2)]
    kept = checkpoint_location(root, "sw", 3)
    for n, location in enumerate([*doomed, kept]):
        published(tmp_path, location, bytes([n + 1]) * 64)
    base = tmp_path  # the agent's working folder
    trial_dir = TrialDir(base / ".sweeper" / "trials" / "sw" / "9")
    trial_dir.path.mkdir(parents=True)
    missing = checkpoint_location(root, "sw", 7)  # removed before, or never published: no error
    CheckpointHook().on_start(removal_assignment([*doomed, missing]), trial_dir, {})

    def gone(location: str) -> bool:
        return not fetch(location, tmp_path / "probe", base=base)

    wait_for(lambda: all(gone(location) for location in doomed), "the named checkpoints are removed")
    assert fetch(kept, tmp_path / "probe", base=base)
    assert (tmp_path / "probe" / "model.bin").read_bytes() == bytes([3]) * 64
    if store == "folder":  # nothing is left behind: no folder moved aside, no empty version folder
        assert sorted(p.name for p in (base / ROOT / "sw").iterdir()) == ["3"]


def test_a_removal_that_fails_is_tried_again_by_the_next_assignment(tmp_path: Path) -> None:
    # The store's folder is, for now, a regular file: removing anything under it fails.
    (tmp_path / ROOT).write_text("")
    trial_dir = TrialDir(tmp_path / ".sweeper" / "trials" / "sw" / "9")
    trial_dir.path.mkdir(parents=True)
    hook = CheckpointHook()
    hook.on_start(removal_assignment([at(1)]), trial_dir, {})
    wait_for(lambda: at(1) not in hook._removed, "the failed removal is forgotten")
    (tmp_path / ROOT).unlink()
    published(tmp_path, at(1), b"x" * 64)
    hook.on_start(removal_assignment([at(1)]), trial_dir, {})
    wait_for(lambda: not (tmp_path / ROOT / "sw" / "1").exists(), "the next assignment removes it")


def test_an_agent_never_removes_what_its_own_trial_starts_from(tmp_path: Path) -> None:
    published(tmp_path, at(6), b"m" * 64)
    published(tmp_path, at(5), b"o" * 64)
    trial_dir = TrialDir(tmp_path / ".sweeper" / "trials" / "sw" / "9")
    trial_dir.path.mkdir(parents=True)
    assignment = dataclasses.replace(removal_assignment([at(5), at(6)]), restore_from=at(6))
    env = CheckpointHook().on_start(assignment, trial_dir, {})
    assert (Path(env["SWEEPER_RESTORE_FROM"]) / "model.bin").read_bytes() == b"m" * 64
    wait_for(lambda: not (tmp_path / at(5)).exists(), "the other checkpoint is removed")
    assert (tmp_path / at(6) / "model.bin").exists()


def test_a_retry_resumes_from_the_newest_checkpoint_its_lost_attempts_published(tmp_path: Path) -> None:
    published(tmp_path, at(5), b"o" * 64)
    published(tmp_path, at(2), b"d" * 64)  # the donor the lost attempts started from
    published(tmp_path, at(3), b"x" * 64)

    def start(resume_from: tuple[str, ...], discard: list[str]) -> str:
        trial_dir = TrialDir(tmp_path / ".sweeper" / "trials" / "sw" / "9")
        trial_dir.path.mkdir(parents=True, exist_ok=True)
        assignment = dataclasses.replace(
            removal_assignment(discard), restore_from=at(2), resume_from=resume_from
        )
        env = CheckpointHook().on_start(assignment, trial_dir, {})
        return (Path(env["SWEEPER_RESTORE_FROM"]) / "model.bin").read_bytes()[:1].decode()

    assert start((at(7),), []) == "d"  # 7 was lost before it published anything
    assert start((at(7), at(5)), [at(5), at(3)]) == "o"
    wait_for(lambda: not (tmp_path / at(3)).exists(), "the other checkpoint is removed")
    assert (tmp_path / at(5) / "model.bin").exists()  # named for removal, yet what it resumes from
