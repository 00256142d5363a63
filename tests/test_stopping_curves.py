"""The curves a stopping rule judges: ended trials' curves are kept, and decisions stay those of a
read of every curve."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from sweeper.coordinator import Coordinator
from sweeper.protocol import AgentInfo, Assignment, TrialOutcome
from sweeper.spec import parse_sweep
from sweeper.spec.model import Asha, Goal, Hyperband, Metric, Pbt, Resource
from sweeper.stopping import (
    AshaRule,
    BracketedAshaRule,
    HyperbandRule,
    KnownCurves,
    PbtRule,
    StopDecision,
    StoppingRule,
    TrialCurve,
    decide_for,
)
from sweeper.store import Lease, Store, TrialDraft, open_store, rows
from sweeper.trials import MetricPoint, SweepState, Trial, TrialState

LOSS = Metric("loss", Goal.MINIMIZE)
ENDS = (TrialState.FINISHED, TrialState.STOPPED, TrialState.FAILED, TrialState.LOST)


@pytest.fixture
def store(sqlite_store_url: str) -> Iterator[Store]:
    with open_store(sqlite_store_url) as store:
        yield store


@pytest.fixture
def points_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many metric points the store has read (turned into MetricPoints) so far."""
    read = [0]
    convert = rows.points_by

    def counted(result: Any) -> dict[Any, list[MetricPoint]]:
        grouped = convert(result)
        read[0] += sum(map(len, grouped.values()))
        return grouped

    monkeypatch.setattr(rows, "points_by", counted)
    return read


def decide_from_every_curve(
    rule: StoppingRule, store: Store, trial: Trial, points: Sequence[MetricPoint]
) -> StopDecision | None:
    """The decision as taken from one read of every curve and every trial's record, nothing kept."""
    name = rule.metric.name
    if not trial.state.is_active or trial.stop_requested or not any(p.name == name for p in points):
        return None
    curves = store.metric_curves(trial.sweep_id, name)
    records = {t.number: t for t in store.list_trials(trial.sweep_id)}
    mine = TrialCurve(trial.number, tuple(curves.get(trial.number, ())), trial)
    others = [TrialCurve(n, tuple(p), records[n]) for n, p in curves.items() if n != trial.number]
    return rule.decide(mine, [mine, *others])


def _start(store: Store, sweep_id: str, member: int) -> Trial:
    lease = Lease(agent="a", host="h", lease_id=f"lease-{member}", expires_at=1e12)
    trial = store.new_trial(
        sweep_id, lambda s, ts: TrialDraft({"m": member}, member=member), lease=lease, now=1.0
    )
    assert trial is not None
    return trial


def _random_value(rng: random.Random, step: int) -> float:
    roll = rng.random()
    if roll < 0.03:
        return math.nan
    if roll < 0.05:
        return math.inf
    return round(1.0 / (step + 1) + rng.random(), 2)  # rounded: ties happen


RULES: dict[str, Callable[[], StoppingRule]] = {
    "hyperband": lambda: HyperbandRule(LOSS, Hyperband(min_iter=2, eta=2)),
    "hyperband-loose": lambda: HyperbandRule(LOSS, Hyperband(min_iter=1, eta=3, strict=False)),
    "asha": lambda: AshaRule(LOSS, Asha(min_iter=1, eta=2, max_iter=20)),
    "bracketed-asha": lambda: BracketedAshaRule(LOSS, Resource(name="epochs", min=1, max=27, eta=3)),
    "pbt": lambda: PbtRule(LOSS, Pbt(perturbation_interval=2, quantile=0.25), seed=3),
}


@pytest.mark.parametrize("rule_name", sorted(RULES))
@pytest.mark.parametrize("seed", [1])
def test_decisions_with_kept_curves_equal_those_from_every_curve(
    store: Store, rule_name: str, seed: int
) -> None:
    """A random history of trials running side by side, logging values at repeated steps, at step 0,
    NaN and infinity, ending in every way: at each report the coordinator's kept curves, a fresh
    read and one read of every curve decide alike."""
    rng = random.Random(seed)
    rule = RULES[rule_name]()
    sweep_id = store.create_sweep(spec={}, method="random", name=None, seed=1, now=0.0).id
    known = KnownCurves()
    running: dict[int, tuple[Trial, int]] = {}  # trial id: the trial, its next seq
    clock = 10.0
    decided = ended = 0
    for _ in range(400):
        if len(running) < 4 and (not running or rng.random() < 0.15):
            trial = _start(store, sweep_id, member=rng.randrange(5))
            running[trial.id] = (trial, 0)
            continue
        trial, seq = running[rng.choice(sorted(running))]
        lease_id = f"lease-{trial.member}"
        if rng.random() < 0.06:
            store.finish_trial(trial.id, lease_id, rng.choice(ENDS), now=clock)
            del running[trial.id]
            ended += 1
            continue
        step = seq if rng.random() < 0.85 else max(0, seq - 1)  # now and then a step again
        if rng.random() < 0.05:
            step = 0
        clock += rng.choice([0.0, 0.5, 1.0])  # equal times happen
        points = [MetricPoint("loss", _random_value(rng, step), step=step, seq=seq, time=clock)]
        if rng.random() < 0.2:
            points.append(MetricPoint("acc", 0.5, step=step, seq=seq, time=clock))
        if rng.random() < 0.1:
            points = [p for p in points if p.name != "loss"] or points
        trial = store.add_metrics(trial.id, lease_id, points, now=clock)
        running[trial.id] = (trial, seq + 1)
        expected = decide_from_every_curve(rule, store, trial, points)
        assert decide_for(rule, store, trial, points, known) == expected
        assert decide_for(rule, store, trial, points) == expected
        decided += expected is not None
    assert decided > 5 and ended > 10  # the history exercised the rule


def _ended_trials(store: Store, sweep_id: str, count: int, values: int) -> None:
    for number in range(count):
        trial = _start(store, sweep_id, member=number)
        points = [MetricPoint("loss", 1.0 + number + i, step=i, seq=i, time=float(i)) for i in range(values)]
        store.add_metrics(trial.id, trial.lease_id or "", points, now=2.0)
        store.finish_trial(trial.id, trial.lease_id, TrialState.FINISHED, now=3.0)


def test_a_read_asks_only_for_what_can_still_change(store: Store, points_read: list[int]) -> None:
    sweep_id = store.create_sweep(spec={}, method="random", name=None, seed=1, now=0.0).id
    _ended_trials(store, sweep_id, count=20, values=10)
    known = KnownCurves()
    running = _start(store, sweep_id, member=99)
    store.add_metrics(running.id, "lease-99", [MetricPoint("loss", 0.5, 0, 0, 0.0)], now=4.0)
    first = known.read(store, sweep_id, "loss")
    assert points_read[0] == 201 and len(first) == 21

    points_read[0] = 0
    store.add_metrics(running.id, "lease-99", [MetricPoint("loss", 0.4, 1, 1, 1.0)], now=4.0)
    again = known.read(store, sweep_id, "loss")
    assert points_read[0] == 2  # the running trial's points, nothing else
    assert again[21].points == (MetricPoint("loss", 0.5, 0, 0, 0.0), MetricPoint("loss", 0.4, 1, 1, 1.0))
    # The ended trials' curves are the ones kept, iterations and all.
    assert all(again[n] is first[n] for n in range(1, 21))
    assert again[1].iterations() is first[1].iterations()
    assert again == KnownCurves().read(store, sweep_id, "loss")

    points_read[0] = 0
    store.finish_trial(running.id, "lease-99", TrialState.STOPPED, now=5.0)
    known.read(store, sweep_id, "loss")  # sees it end: kept from now on
    assert points_read[0] == 2
    points_read[0] = 0
    kept = known.read(store, sweep_id, "loss")
    assert points_read[0] == 0
    assert {n: c.points for n, c in kept.items()} == {n: c.points for n, c in again.items()}
    assert kept[21].trial is not None and kept[21].trial.state is TrialState.STOPPED


def test_the_coordinator_reads_only_the_running_trials_points_per_report(
    sqlite_store_url: str, points_read: list[int]
) -> None:
    store = open_store(sqlite_store_url)
    coordinator = Coordinator(store, lease_seconds=3600)
    spec = parse_sweep(
        {
            "method": "random",
            "metric": {"name": "loss"},
            "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 3},
            "parameters": {"x": {"min": 0.0, "max": 1.0}},
        }
    )
    sweep_id = coordinator.create_sweep(spec).id
    agent = AgentInfo(name="a", host="h")
    stopped = 0
    for number in range(1, 31):
        a = coordinator.next_trial(sweep_id, agent)
        assert isinstance(a, Assignment)
        for i in range(6):
            points_read[0] = 0
            point = MetricPoint("loss", 1.0 / (i + 1) + number / 100, step=i, seq=i, time=float(i))
            directive = coordinator.report_metrics(a.trial_id, a.lease_id, [point])
            if number > 1:
                # The trial's own points (the first report also reads the trials that ended since).
                assert points_read[0] <= i + 1 + 6 * (i == 0)
            if directive.stop:
                stopped += 1
                break
        coordinator.finish_trial(a.trial_id, a.lease_id, TrialOutcome(TrialState.FINISHED, 0))
    assert stopped > 0  # the rule did decide, from what it kept
    coordinator.set_sweep_state(sweep_id, SweepState.CANCELLED)
    assert not coordinator._curves._sweeps  # an ended sweep's curves are let go
    store.close()


def test_what_a_batch_read_is_kept_only_once_the_batch_commits(store: Store) -> None:
    sweep_id = store.create_sweep(spec={}, method="random", name=None, seed=1, now=0.0).id
    trial = _start(store, sweep_id, member=1)
    store.add_metrics(trial.id, "lease-1", [MetricPoint("loss", 0.5, 0, 0, 0.0)], now=2.0)
    known = KnownCurves()

    class Undone(Exception):
        pass

    with pytest.raises(Undone), store.batch():
        store.finish_trial(trial.id, "lease-1", TrialState.STOPPED, now=3.0)
        assert known.read(store, sweep_id, "loss")[1].trial.state is TrialState.STOPPED  # type: ignore[union-attr]
        raise Undone  # the batch is rolled back: the trial never ended
    assert store.get_trial(trial.id).state is TrialState.RUNNING
    store.add_metrics(trial.id, "lease-1", [MetricPoint("loss", 0.4, 1, 1, 1.0)], now=4.0)
    assert [p.value for p in known.read(store, sweep_id, "loss")[1].points] == [0.5, 0.4]
