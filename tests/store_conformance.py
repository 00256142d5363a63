"""The behaviour every store must show. A backend's test module subclasses
:class:`StoreConformance` and provides a ``store_url`` fixture naming an empty store."""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from sweeper.protocol import LeaseLostError, SweepNotFoundError
from sweeper.store import (
    BatchAbandoned,
    InvalidTransitionError,
    Lease,
    Store,
    StoreError,
    TrialDraft,
    TrialNotFoundError,
    open_store,
)
from sweeper.trials import (
    SWEEP_TRANSITIONS,
    CountedTrials,
    MetricPoint,
    Sweep,
    SweepState,
    Trial,
    TrialState,
    count_states,
)

SLOTS = 40
FAR = 1e12  # a lease that never runs out in these tests


def lease(agent: str = "agent-1", lease_id: str = "lease-1", expires_at: float = 100.0) -> Lease:
    return Lease(agent=agent, host="box-1", lease_id=lease_id, expires_at=expires_at)


def point(name: str, value: float, step: int, seq: int) -> MetricPoint:
    return MetricPoint(name=name, value=value, step=step, seq=seq, time=10.0 + seq)


# Reports of one metric in turn, with the summary each leaves: points sent again with a seq already
# stored, two with one seq in one report, a late one.
POINTS_COMING_AGAIN = [
    ([point("loss", 0.5, 1, 1)], 0.5),
    ([point("loss", 0.9, 5, 1)], 0.5),  # seq 1 again, another step and value: ignored
    ([point("loss", 0.3, 2, 2)], 0.3),
    ([point("loss", 0.1, 3, 4), point("loss", 0.8, 9, 4)], 0.1),  # the first of seq 4 is stored
    ([point("loss", 0.7, 1, 3)], 0.1),  # late
]


def assert_counted(trials: Sequence[Trial]) -> None:
    """The trials come with their counts by state (every lease asks for them), and those agree."""
    assert isinstance(trials, CountedTrials)
    assert {k: v for k, v in count_states(trials).items() if v} == Counter(t.state for t in trials)


def lowest_free_slot(sweep: Sweep, trials: Sequence[Trial]) -> TrialDraft | None:
    """Like a grid strategy: the first slot no trial has taken, or None when all are."""
    taken = {t.config["slot"] for t in trials}
    free = [slot for slot in range(SLOTS) if slot not in taken]
    return TrialDraft({"slot": free[0]}) if free else None


def claim_until_full(url: str, sweep_id: str, worker: str, start: Any, results: Any) -> None:
    """One process: its own store, claiming slots until none is left."""
    store = open_store(url)
    claimed: list[int] = []
    try:
        start.wait(60)
        while True:
            trial = store.new_trial(
                sweep_id, lowest_free_slot, lease=lease(worker, f"{worker}-{len(claimed)}", FAR), now=1.0
            )
            if trial is None:
                break
            claimed.append(trial.config["slot"])
        results.put((worker, claimed))
    except BaseException as exc:
        results.put((worker, repr(exc)))
        raise
    finally:
        store.close()


def open_and_create(url: str, worker: str, start: Any, results: Any) -> None:
    """One process opening a store that may not exist yet, at the same time as others."""
    try:
        start.wait(60)
        with open_store(url) as store:
            sweep = store.create_sweep(spec={}, method="grid", name=worker, seed=0, now=1.0)
        results.put((worker, sweep.id))
    except BaseException as exc:
        results.put((worker, repr(exc)))
        raise


def run_processes(target: Any, args_for: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """Start one spawned process per argument tuple together; collect what each put."""
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(len(args_for)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, start, results)) for args in args_for]
    for proc in procs:
        proc.start()
    found: dict[str, Any] = {}
    try:
        for _ in procs:
            worker, value = results.get(timeout=120)
            found[worker] = value
    finally:
        for proc in procs:
            proc.join(30)
    assert [proc.exitcode for proc in procs] == [0] * len(procs), found
    return found


class StoreConformance:
    """Every store runs these. Subclasses provide the ``store_url`` fixture."""

    # In a batch, whether a call that fails is undone alone and the batch goes on (SQLite's
    # savepoints), or gives the batch up, nothing of it written (PostgreSQL).
    undoes_a_failed_call_alone: bool

    @pytest.fixture
    def store(self, store_url: str) -> Iterator[Store]:
        with open_store(store_url) as store:
            yield store

    @pytest.fixture
    def sweep(self, store: Store) -> Sweep:
        return store.create_sweep(spec={"method": "grid"}, method="grid", name="demo", seed=7, now=1.0)

    def started(self, store: Store, sweep: Sweep, config: dict[str, Any] | None = None, **kw: Any) -> Trial:
        trial = store.new_trial(
            sweep.id, lambda s, ts: TrialDraft(config or {"lr": 0.1}), lease=lease(**kw), now=2.0
        )
        assert trial is not None
        return trial

    # --- sweeps -------------------------------------------------------------

    def test_create_and_get_sweep(self, store: Store) -> None:
        spec = {
            "method": "bayes",
            "parameters": {"lr": {"min": 1e-5, "max": 0.1}},
            "metric": {"name": "loss"},
        }
        made = store.create_sweep(spec=spec, method="bayes", name="first", seed=42, now=5.0)
        assert re.fullmatch(r"[a-z0-9]{8}", made.id)
        assert (made.name, made.method, made.state, made.seed) == ("first", "bayes", SweepState.RUNNING, 42)
        assert (made.created_at, made.updated_at) == (5.0, 5.0)
        assert made.spec == spec
        assert store.get_sweep(made.id) == made

    def test_list_sweeps_newest_first(self, store: Store) -> None:
        assert store.list_sweeps() == []
        ids = [
            store.create_sweep(spec={}, method="grid", name=None, seed=0, now=t).id for t in (1.0, 3.0, 2.0)
        ]
        assert [s.id for s in store.list_sweeps()] == [ids[1], ids[2], ids[0]]

    def test_unknown_sweep(self, store: Store) -> None:
        for call in (
            lambda: store.get_sweep("nosuch00"),
            lambda: store.set_sweep_state("nosuch00", SweepState.PAUSED, now=1.0),
            lambda: store.list_trials("nosuch00"),
            lambda: store.new_trial("nosuch00", lowest_free_slot, lease=lease(), now=1.0),
        ):
            with pytest.raises(SweepNotFoundError, match="nosuch00"):
                call()

    def test_sweep_transitions(self, store: Store) -> None:
        ways_to = {state: [state] for state in SweepState if state is not SweepState.RUNNING}
        ways_to[SweepState.RUNNING] = []
        for start, path in ways_to.items():
            for target in SweepState:
                sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
                for step in path:
                    store.set_sweep_state(sweep.id, step, now=2.0)
                if target is start:  # a no-op, but a running sweep resumed again is resumed now
                    again = store.set_sweep_state(sweep.id, target, now=3.0)
                    assert (again.state, again.updated_at) == (
                        start,
                        3.0 if start is SweepState.RUNNING else 2.0,
                    )
                elif target in SWEEP_TRANSITIONS[start]:
                    moved = store.set_sweep_state(sweep.id, target, now=3.0)
                    assert (moved.state, moved.updated_at) == (target, 3.0)
                else:
                    with pytest.raises(InvalidTransitionError) as caught:
                        store.set_sweep_state(sweep.id, target, now=3.0)
                    for word in (sweep.id, start.value, target.value):
                        assert word in str(caught.value)
                    assert store.get_sweep(sweep.id).state is start

    # --- new trials ---------------------------------------------------------

    def test_new_trial_numbers_and_records(self, store: Store, sweep: Sweep) -> None:
        seen: list[tuple[str, list[int]]] = []

        def decide(locked: Sweep, trials: Sequence[Trial]) -> TrialDraft:
            seen.append((locked.id, [t.number for t in trials]))
            assert all(t.history is None for t in trials)
            return TrialDraft({"opt": {"name": "adam", "lr": 0.01 * (len(trials) + 1)}, "layers": [64, 32]})

        made = [
            store.new_trial(sweep.id, decide, lease=lease(lease_id=f"l{i}"), now=2.0 + i) for i in range(3)
        ]
        assert seen == [(sweep.id, []), (sweep.id, [1]), (sweep.id, [1, 2])]
        assert [t.number for t in made if t] == [1, 2, 3]
        first = made[0]
        assert first is not None
        assert first.config == {"opt": {"name": "adam", "lr": 0.01}, "layers": [64, 32]}
        assert (first.state, first.created_at, first.sweep_id) == (TrialState.RUNNING, 2.0, sweep.id)
        assert (first.agent, first.host, first.lease_id, first.lease_expires_at) == (
            "agent-1",
            "box-1",
            "l0",
            100.0,
        )
        assert (first.ended_at, first.summary, first.stop_requested) == (None, {}, None)
        assert store.get_trial(first.id) == first

    def test_a_forked_child_and_its_parent_both_write_with_the_same_store(
        self, store: Store, sweep: Sweep
    ) -> None:
        # The parent's pooled connections must not be used or closed in the child: the child opens
        # its own, and the parent's stay usable. (It fails without fork handling on PostgreSQL,
        # whose connections are sockets the two processes would share; SQLite's survive either way.)
        self.started(store, sweep, lease_id="parent-1")
        pid = os.fork()
        if pid == 0:  # the child: exit status 0 only if its own write landed
            try:
                child = self.started(store, sweep, lease_id="child")
                store.close()  # closes the child's connections only
                os._exit(0 if child.number == 2 else 3)
            except BaseException:
                os._exit(4)
        assert _exit_code_of_child(pid) == 0
        self.started(store, sweep, lease_id="parent-2")
        found = store.list_trials(sweep.id)
        assert [(t.number, t.lease_id) for t in found] == [(1, "parent-1"), (2, "child"), (3, "parent-2")]
        pid = os.fork()
        if pid == 0:  # a child that only closes the store it inherited
            try:
                store.close()
                os._exit(0)
            except BaseException:
                os._exit(4)
        assert _exit_code_of_child(pid) == 0
        assert len(store.list_trials(sweep.id)) == 3  # the parent's connections still work

    def test_decide_none_inserts_nothing(self, store: Store, sweep: Sweep) -> None:
        assert store.new_trial(sweep.id, lambda s, ts: None, lease=lease(), now=2.0) is None
        assert store.list_trials(sweep.id) == []

    def test_sweep_not_running_hands_out_nothing(self, store: Store, sweep: Sweep) -> None:
        def must_not_run(s: Sweep, ts: Sequence[Trial]) -> TrialDraft:
            raise AssertionError("decide called for a paused sweep")

        store.set_sweep_state(sweep.id, SweepState.PAUSED, now=2.0)
        assert store.new_trial(sweep.id, must_not_run, lease=lease(), now=3.0) is None
        assert store.list_trials(sweep.id) == []

    def test_retry_of(self, store: Store, sweep: Sweep) -> None:
        first = self.started(store, sweep)
        store.finish_trial(first.id, None, TrialState.LOST, now=3.0)
        retry = store.new_trial(
            sweep.id, lambda s, ts: TrialDraft(ts[0].config, retry_of=1), lease=lease(), now=4.0
        )
        assert retry is not None and (retry.number, retry.retry_of, retry.config) == (2, 1, first.config)
        with pytest.raises(StoreError, match="#9"):
            store.new_trial(sweep.id, lambda s, ts: TrialDraft({}, retry_of=9), lease=lease(), now=5.0)

    def test_unknown_trial(self, store: Store) -> None:
        with pytest.raises(TrialNotFoundError, match="12345") as caught:
            store.get_trial(12345)
        assert isinstance(caught.value, KeyError) and isinstance(caught.value, StoreError)
        for call in (
            lambda: store.renew_lease(12345, "x", expires_at=9.0, now=1.0),
            lambda: store.add_metrics(12345, "x", [], now=1.0),
            lambda: store.finish_trial(12345, None, TrialState.FAILED, now=1.0),
            lambda: store.request_stop(12345, "why"),
        ):
            with pytest.raises(LookupError, match="12345"):
                call()

    # --- finishing ----------------------------------------------------------

    def test_finish_records_the_outcome(self, store: Store, sweep: Sweep) -> None:
        trial = self.started(store, sweep)
        done = store.finish_trial(
            trial.id, "lease-1", TrialState.FAILED, now=9.0, exit_code=3, stderr_tail="boom", stop_reason=None
        )
        assert (done.state, done.ended_at, done.exit_code, done.stderr_tail) == (
            TrialState.FAILED,
            9.0,
            3,
            "boom",
        )
        assert store.get_trial(trial.id) == done

    def test_idle_sweeps_are_the_running_ones_with_no_trial_running(self, store: Store, sweep: Sweep) -> None:
        def new_sweep() -> Sweep:
            return store.create_sweep(spec={"method": "grid"}, method="grid", name=None, seed=0, now=1.0)

        empty, busy, paused = new_sweep(), new_sweep(), new_sweep()
        for when, lease_id in ((5.0, "a"), (3.0, "b")):  # ended out of order: the latest end counts
            trial = self.started(store, sweep, lease_id=lease_id)
            store.finish_trial(trial.id, lease_id, TrialState.FINISHED, now=when, exit_code=0)
        self.started(store, busy, lease_id="c")
        store.set_sweep_state(paused.id, SweepState.PAUSED, now=2.0)
        assert store.idle_sweeps() == {sweep.id: (2, 5.0), empty.id: (0, None)}

    def test_finished_trial_cannot_change(self, store: Store, sweep: Sweep) -> None:
        trial = self.started(store, sweep)
        done = store.finish_trial(trial.id, "lease-1", TrialState.FINISHED, now=5.0, exit_code=0)
        with pytest.raises(InvalidTransitionError) as caught:
            store.finish_trial(trial.id, None, TrialState.STOPPED, now=6.0, stop_reason="late")
        for word in (f"trial {trial.number} of sweep {sweep.id}", "finished", "stopped"):
            assert word in str(caught.value)
        for call in (
            lambda: store.finish_trial(trial.id, "lease-1", TrialState.FAILED, now=6.0),
            lambda: store.renew_lease(trial.id, "lease-1", expires_at=200.0, now=6.0),
            lambda: store.add_metrics(trial.id, "lease-1", [point("loss", 1.0, 1, 1)], now=6.0),
        ):
            with pytest.raises(LeaseLostError):
                call()
        assert store.request_stop(trial.id, "too late") == done
        assert store.get_trial(trial.id, with_history=True) == done.__class__(
            **{**done.__dict__, "history": ()}
        )

    def test_cannot_finish_into_running(self, store: Store, sweep: Sweep) -> None:
        trial = self.started(store, sweep)
        with pytest.raises(InvalidTransitionError, match="running"):
            store.finish_trial(trial.id, None, TrialState.RUNNING, now=3.0)

    def test_coordinator_finishes_without_the_lease(self, store: Store, sweep: Sweep) -> None:
        trial = self.started(store, sweep, expires_at=10.0)
        done = store.finish_trial(trial.id, None, TrialState.STOPPED, now=50.0, stop_reason="sweep cancelled")
        assert (done.state, done.stop_reason, done.ended_at) == (TrialState.STOPPED, "sweep cancelled", 50.0)

    def test_end_trial_tells_how_many_trials_of_the_sweep_still_run(self, store: Store, sweep: Sweep) -> None:
        first = self.started(store, sweep, lease_id="lease-1")
        second = self.started(store, sweep, lease_id="lease-2")
        other = store.create_sweep(spec={"method": "grid"}, method="grid", name="other", seed=7, now=1.0)
        self.started(store, other, lease_id="lease-3")  # runs in another sweep: not counted
        done, running = store.end_trial(first.id, "lease-1", TrialState.FAILED, now=9.0, exit_code=3)
        assert (done.state, done.exit_code, running) == (TrialState.FAILED, 3, 1)
        assert store.get_trial(first.id) == done
        assert store.end_trial(second.id, "lease-2", TrialState.FINISHED, now=9.0)[1] == 0
        with pytest.raises(LeaseLostError):  # ended already: the lease no longer holds
            store.end_trial(second.id, "lease-2", TrialState.FINISHED, now=9.0)
        with pytest.raises(LookupError, match="12345"):
            store.end_trial(12345, "x", TrialState.FINISHED, now=9.0)

    # --- leases -------------------------------------------------------------

    def test_renew_lease(self, store: Store, sweep: Sweep) -> None:
        trial = self.started(store, sweep, expires_at=100.0)
        assert store.renew_lease(trial.id, "lease-1", expires_at=130.0, now=100.0).lease_expires_at == 130.0
        assert store.get_trial(trial.id).lease_expires_at == 130.0

    def test_lease_lost(self, store: Store, sweep: Sweep) -> None:
        trial = self.started(store, sweep, expires_at=100.0)
        with pytest.raises(LeaseLostError, match="another lease"):
            store.renew_lease(trial.id, "stolen", expires_at=130.0, now=50.0)
        with pytest.raises(LeaseLostError, match="expired"):
            store.renew_lease(trial.id, "lease-1", expires_at=130.0, now=100.5)
        with pytest.raises(LeaseLostError):
            store.add_metrics(trial.id, "lease-1", [point("loss", 1.0, 1, 1)], now=101.0)
        with pytest.raises(LeaseLostError):
            store.finish_trial(trial.id, "lease-1", TrialState.FINISHED, now=101.0)
        with pytest.raises(LeaseLostError):
            store.finish_trial(trial.id, "stolen", TrialState.FINISHED, now=50.0)
        assert store.get_trial(trial.id).state is TrialState.RUNNING
        assert store.get_trial(trial.id, with_history=True).history == ()

    # --- metrics ------------------------------------------------------------

    def test_metrics_batch_sent_twice_counts_once(self, store: Store, sweep: Sweep) -> None:
        trial = self.started(store, sweep)
        batch = [point("loss", 1.0 / (i + 1), i, i) for i in range(5)] + [point("acc", 0.5, 4, 4)]
        first = store.add_metrics(trial.id, "lease-1", batch, now=3.0)
        again = store.add_metrics(trial.id, "lease-1", batch, now=4.0)
        assert first.summary == again.summary == {"loss": 0.2, "acc": 0.5}
        history = store.get_trial(trial.id, with_history=True).history
        assert history is not None and len(history) == 6

    def test_summary_follows_highest_step_and_seq(self, store: Store, sweep: Sweep) -> None:
        trial = self.started(store, sweep)
        late = [point("loss", float(10 - i), i, i) for i in range(5, 10)]
        early = [point("loss", float(100 - i), i, i) for i in range(5)] + [point("acc", 0.9, 0, 0)]
        store.add_metrics(trial.id, "lease-1", late, now=3.0)
        assert store.add_metrics(trial.id, "lease-1", early, now=4.0).summary == {"loss": 1.0, "acc": 0.9}
        # Same step, a later log call wins; names not in a batch keep their value.
        same_step = [point("loss", 0.25, 9, 20), point("loss", 0.75, 9, 15)]
        assert store.add_metrics(trial.id, "lease-1", same_step, now=5.0).summary == {
            "loss": 0.25,
            "acc": 0.9,
        }
        assert store.add_metrics(trial.id, "lease-1", [], now=6.0).summary == {"loss": 0.25, "acc": 0.9}

    def test_summary_follows_the_stored_points_when_a_point_comes_again_changed(
        self, store: Store, sweep: Sweep
    ) -> None:
        trial = self.started(store, sweep)

        def stored_latest() -> float:
            history = store.get_trial(trial.id, with_history=True).history or ()
            return max(history, key=lambda p: (p.step, p.seq)).value

        for batch, _ in POINTS_COMING_AGAIN:
            reported = store.add_metrics(trial.id, "lease-1", batch, now=3.0)
            assert reported.summary == store.get_trial(trial.id).summary == {"loss": stored_latest()}
        assert len(store.get_trial(trial.id, with_history=True).history or ()) == 4

    def test_summaries_in_a_batch_follow_the_stored_points(self, store: Store, sweep: Sweep) -> None:
        """In a batch (where PostgreSQL sends a report's writes with the next statement), each
        report's summary, and what a read in the batch sees, is what the stored points give."""
        trial = self.started(store, sweep)
        with store.batch():
            for batch, expected in POINTS_COMING_AGAIN:
                reported = store.report_metrics(trial.id, "lease-1", batch, expires_at=200.0, now=3.0)
                assert reported.summary == store.get_trial(trial.id).summary == {"loss": expected}
            finished, running = store.end_trial(trial.id, "lease-1", TrialState.FINISHED, now=4.0)
            assert (finished.state, finished.summary, running) == (TrialState.FINISHED, {"loss": 0.1}, 0)
        stored = store.get_trial(trial.id, with_history=True)
        assert (stored.state, stored.summary, stored.lease_expires_at) == (
            TrialState.FINISHED,
            {"loss": 0.1},
            200.0,
        )
        assert sorted((p.step, p.seq, p.value) for p in stored.history or ()) == [
            (1, 1, 0.5),
            (1, 3, 0.7),
            (2, 2, 0.3),
            (3, 4, 0.1),
        ]

    def test_nan_and_infinity_round_trip(self, store: Store, sweep: Sweep) -> None:
        trial = self.started(store, sweep)
        values = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "tiny": 5e-324}
        batch = [point(name, value, 1, i) for i, (name, value) in enumerate(values.items())]
        summary = store.add_metrics(trial.id, "lease-1", batch, now=3.0).summary
        loaded = store.get_trial(trial.id, with_history=True)
        for name, value in values.items():
            for got in (
                summary[name],
                loaded.summary[name],
                *(p.value for p in loaded.history or () if p.name == name),
            ):
                assert got == value or (math.isnan(got) and math.isnan(value)), (name, got)

    def test_history_order_and_one_load_for_many_trials(self, store: Store, sweep: Sweep) -> None:
        one = self.started(store, sweep, config={"n": 1})
        two = self.started(store, sweep, config={"n": 2}, lease_id="lease-2")
        quiet = self.started(store, sweep, config={"n": 3}, lease_id="lease-3")
        store.add_metrics(
            one.id, "lease-1", [point("b", 1.0, 2, 3), point("a", 2.0, 2, 3), point("a", 3.0, 1, 4)], now=3.0
        )
        store.add_metrics(one.id, "lease-1", [point("a", 4.0, 1, 2)], now=4.0)
        store.add_metrics(two.id, "lease-2", [point("a", 5.0, 0, 1)], now=4.0)
        listed = store.list_trials(sweep.id, with_history=True)
        assert [t.id for t in listed] == [one.id, two.id, quiet.id]
        history = listed[0].history or ()
        assert [(p.step, p.seq, p.name) for p in history] == [
            (1, 2, "a"),
            (1, 4, "a"),
            (2, 3, "a"),
            (2, 3, "b"),
        ]
        assert listed[0].curve("a") == [(1, 4.0), (1, 3.0), (2, 2.0)]
        assert [p.value for p in listed[1].history or ()] == [5.0]
        assert listed[2].history == ()
        assert all(t.history is None for t in store.list_trials(sweep.id))

    def test_list_trials_a_page_at_a_time(self, store: Store, sweep: Sweep) -> None:
        trials = [self.started(store, sweep, config={"n": i}, lease_id=f"l{i}") for i in range(7)]
        for i, trial in enumerate(trials):  # each its own curve, so a page's histories can be told apart
            store.add_metrics(
                trial.id, f"l{i}", [point("loss", i + s / 10, s, s + 1) for s in range(3)], now=3.0
            )
        whole = store.list_trials(sweep.id, with_history=True)
        pages, after = [], 0
        while page := store.list_trials(sweep.id, with_history=True, after=after, limit=3):
            pages.append(page)
            after = page[-1].number
        assert [[t.number for t in page] for page in pages] == [[1, 2, 3], [4, 5, 6], [7]]
        assert [t for page in pages for t in page] == whole
        assert [t.number for t in store.list_trials(sweep.id, after=5)] == [6, 7]
        running = store.list_trials(sweep.id, states=[TrialState.RUNNING], after=2, limit=2)
        assert [t.number for t in running] == [3, 4]
        with pytest.raises(ValueError, match="at least one"):
            store.list_trials(sweep.id, limit=0)

    def test_list_trials_by_state(self, store: Store, sweep: Sweep) -> None:
        trials = [self.started(store, sweep, config={"n": i}, lease_id=f"l{i}") for i in range(4)]
        store.finish_trial(trials[1].id, None, TrialState.FAILED, now=3.0)
        store.finish_trial(trials[3].id, None, TrialState.FINISHED, now=3.0)
        running = store.list_trials(sweep.id, states=[TrialState.RUNNING])
        assert [t.number for t in running] == [1, 3]
        ended = store.list_trials(
            sweep.id, states=[TrialState.FINISHED, TrialState.FAILED], with_history=True
        )
        assert [t.number for t in ended] == [2, 4]
        assert store.list_trials(sweep.id, states=[]) == []
        assert store.count_trials(sweep.id) == 4
        assert store.count_trials(sweep.id, states=[TrialState.RUNNING]) == 2
        assert store.count_trials(sweep.id, states=[TrialState.FINISHED, TrialState.FAILED]) == 2
        assert store.count_trials(sweep.id, states=[TrialState.LOST]) == 0
        with pytest.raises(SweepNotFoundError):
            store.count_trials("nosuchid")

    def test_report_metrics_adds_points_and_renews_the_lease(self, store: Store, sweep: Sweep) -> None:
        trial = self.started(store, sweep, expires_at=100.0)
        batch = [point("loss", 0.5, 1, 1), point("loss", 0.25, 2, 2), point("acc", 0.9, 2, 3)]
        reported = store.report_metrics(trial.id, "lease-1", batch, expires_at=130.0, now=100.0)
        assert (reported.lease_expires_at, reported.summary) == (130.0, {"loss": 0.25, "acc": 0.9})
        assert store.get_trial(trial.id) == reported
        again = store.report_metrics(trial.id, "lease-1", batch[:1], expires_at=140.0, now=110.0)
        assert (again.lease_expires_at, again.summary) == (140.0, {"loss": 0.25, "acc": 0.9})
        renewed = store.report_metrics(trial.id, "lease-1", [], expires_at=150.0, now=120.0)
        assert (renewed.lease_expires_at, renewed.summary) == (150.0, {"loss": 0.25, "acc": 0.9})
        history = store.get_trial(trial.id, with_history=True).history
        assert history is not None and len(history) == 3

    def test_report_metrics_without_the_lease_changes_nothing(self, store: Store, sweep: Sweep) -> None:
        trial = self.started(store, sweep, expires_at=100.0)
        with pytest.raises(LeaseLostError, match="another lease"):
            store.report_metrics(trial.id, "stolen", [point("loss", 1.0, 1, 1)], expires_at=130.0, now=50.0)
        with pytest.raises(LeaseLostError, match="expired"):
            store.report_metrics(trial.id, "lease-1", [point("loss", 1.0, 1, 1)], expires_at=130.0, now=101.0)
        store.finish_trial(trial.id, None, TrialState.STOPPED, now=60.0)
        with pytest.raises(LeaseLostError, match="stopped"):
            store.report_metrics(trial.id, "lease-1", [point("loss", 1.0, 1, 1)], expires_at=130.0, now=70.0)
        loaded = store.get_trial(trial.id, with_history=True)
        assert (loaded.lease_expires_at, loaded.summary, loaded.history) == (100.0, {}, ())
        with pytest.raises(TrialNotFoundError):
            store.report_metrics(10**9, "lease-1", [], expires_at=130.0, now=70.0)

    def test_new_trial_sees_every_change_since_its_last_read(
        self, store: Store, sweep: Sweep, store_url: str
    ) -> None:
        """``decide`` and a listing of the sweep's trials (both served from what was read before)
        get what a full read gives, also after changes made through another store (another
        coordinator on the same database) and by metrics, stops, ends and lease expiry."""
        given: list[list[Trial]] = []

        def record(_sweep: Sweep, so_far: Sequence[Trial]) -> TrialDraft:
            assert_counted(so_far)
            given.append(list(so_far))
            return TrialDraft({"n": len(so_far)})

        def lease_one(on: Store, name: str, expires_at: float = FAR) -> Trial:
            before = store.list_trials(sweep.id)
            assert_counted(before)
            assert before == store.list_trials(sweep.id, states=list(TrialState))  # a full read
            trial = on.new_trial(sweep.id, record, lease=lease(name, name, expires_at), now=2.0)
            assert trial is not None and given[-1] == before
            return trial

        a = lease_one(store, "a")
        b = lease_one(store, "b", expires_at=50.0)
        c = lease_one(store, "c")
        with open_store(store_url) as other:
            other.add_metrics(a.id, "a", [point("loss", 0.5, 1, 1)], now=3.0)
            other.finish_trial(a.id, "a", TrialState.FINISHED, now=4.0)
            other.request_stop(c.id, "asha")
            d = lease_one(other, "d")
            lease_one(store, "e")
            other.expire_leases(now=60.0)
            other.finish_trial(d.id, "d", TrialState.FAILED, now=61.0, exit_code=1)
            lease_one(store, "f")
            other.report_metrics(c.id, "c", [point("loss", 0.7, 1, 1)], expires_at=FAR, now=62.0)
            store.finish_trial(c.id, "c", TrialState.STOPPED, now=63.0)
            lease_one(other, "g")
            lease_one(store, "h")
        states = [t.state for t in given[-1]]
        assert [t.number for t in given[-1]] == list(range(1, 8))
        assert given[-1][1] == store.get_trial(b.id)
        assert states[:4] == [TrialState.FINISHED, TrialState.LOST, TrialState.STOPPED, TrialState.FAILED]
        assert given[-1][2].summary == {"loss": 0.7}

    # --- batches ------------------------------------------------------------

    def test_calls_in_a_batch_see_each_other_and_commit_together(
        self, store: Store, sweep: Sweep, store_url: str
    ) -> None:
        told: list[int] = []
        with open_store(store_url) as other:
            with store.batch():
                first = store.new_trial(sweep.id, lowest_free_slot, lease=lease("a", "a"), now=2.0)
                assert first is not None
                store.add_metrics(first.id, "a", [point("loss", 0.5, 1, 1)], now=3.0)
                second = store.new_trial(sweep.id, lowest_free_slot, lease=lease("b", "b"), now=2.0)
                assert second is not None and second.config != first.config
                assert [t.number for t in store.list_trials(sweep.id)] == [1, 2]
                assert store.get_trial(first.id).summary == {"loss": 0.5}
                store.after_commit(lambda: told.append(len(other.list_trials(sweep.id))))
                assert other.list_trials(sweep.id) == [] and told == []  # nothing committed yet
            assert told == [2]
            assert [t.number for t in other.list_trials(sweep.id)] == [1, 2]
            assert other.get_trial(first.id).summary == {"loss": 0.5}

    def test_a_call_that_fails_in_a_batch_takes_no_effect(self, store: Store, sweep: Sweep) -> None:
        """Where the store can undo the failed call alone, the batch goes on; where it cannot,
        the batch is given up with nothing of it written."""
        trial = store.new_trial(sweep.id, lowest_free_slot, lease=lease(), now=2.0)
        assert trial is not None
        went: list[str] = []
        try:
            with store.batch():
                store.add_metrics(trial.id, "lease-1", [point("loss", 0.5, 1, 1)], now=3.0)
                with pytest.raises(LeaseLostError):
                    store.add_metrics(trial.id, "stale-lease", [point("loss", 9.0, 2, 2)], now=3.0)
                try:
                    store.add_metrics(trial.id, "lease-1", [point("loss", 0.25, 3, 3)], now=3.0)
                    went.append("went on")
                except BatchAbandoned:
                    went.append("refused")
        except BatchAbandoned:
            went.append("given up")
        history = store.get_trial(trial.id, with_history=True).history or ()
        values = [p.value for p in history]
        if self.undoes_a_failed_call_alone:
            assert (went, values) == (["went on"], [0.5, 0.25])
        else:
            assert (went, values) == (["refused", "given up"], [])

    # --- decisions and expiry ----------------------------------------------

    def test_request_stop(self, store: Store, sweep: Sweep) -> None:
        trial = self.started(store, sweep)
        assert store.request_stop(trial.id, "asha: below the median at step 3").stop_requested == (
            "asha: below the median at step 3"
        )
        assert (
            store.request_stop(trial.id, "another reason").stop_requested
            == "asha: below the median at step 3"
        )
        renewed = store.renew_lease(trial.id, "lease-1", expires_at=120.0, now=10.0)
        assert (renewed.state, renewed.stop_requested) == (
            TrialState.RUNNING,
            "asha: below the median at step 3",
        )

    def test_expire_leases(self, store: Store, sweep: Sweep) -> None:
        gone = self.started(store, sweep, agent="gpu-3", expires_at=50.0)
        edge = self.started(store, sweep, lease_id="lease-2", expires_at=60.0)
        alive = self.started(store, sweep, lease_id="lease-3", expires_at=500.0)
        ended = self.started(store, sweep, lease_id="lease-4", expires_at=10.0)
        store.finish_trial(ended.id, "lease-4", TrialState.FINISHED, now=5.0)
        lost = store.expire_leases(now=60.0)
        assert [t.id for t in lost] == [gone.id]
        assert (lost[0].state, lost[0].ended_at) == (TrialState.LOST, 60.0)
        assert lost[0].stop_reason == "lease expired (agent gpu-3 on box-1 stopped heartbeating)"
        assert store.get_trial(gone.id) == lost[0]
        assert store.expire_leases(now=60.0) == []
        with pytest.raises(LeaseLostError):
            store.renew_lease(gone.id, "lease-1", expires_at=200.0, now=60.0)
        assert store.renew_lease(edge.id, "lease-2", expires_at=90.0, now=60.0).state is TrialState.RUNNING
        assert store.get_trial(alive.id).state is TrialState.RUNNING
        assert store.get_trial(ended.id).state is TrialState.FINISHED

    def test_a_lease_renewed_as_interrupted_expires_interrupted(self, store: Store, sweep: Sweep) -> None:
        trial = self.started(store, sweep, agent="gpu-3", expires_at=50.0)
        renewed = store.renew_lease(
            trial.id, "lease-1", expires_at=70.0, now=40.0, interrupted="interrupted (SIGTERM)"
        )
        assert renewed.stop_reason == "interrupted (SIGTERM)" and store.get_trial(trial.id) == renewed
        (lost,) = store.expire_leases(now=80.0)  # the agent was killed before it reported the end
        assert lost.state is TrialState.LOST and lost.stop_reason == (
            "interrupted (SIGTERM); lease expired (agent gpu-3 on box-1 stopped heartbeating)"
            " before the trial ended"
        )

    def test_an_interrupted_end_reported_after_the_lease_ran_out_is_taken(
        self, store: Store, sweep: Sweep
    ) -> None:
        """Its agent was told to stop while the coordinator was away, and says so once it is back:
        the trial stays lost, now as interrupted (no attempt used). Nothing else is taken late."""
        trial = self.started(store, sweep, agent="gpu-3", expires_at=50.0)
        other = self.started(store, sweep, lease_id="lease-2", expires_at=50.0)
        store.expire_leases(now=60.0)
        assert {t.state for t in store.list_trials(sweep.id)} == {TrialState.LOST}  # read, and kept
        with pytest.raises(LeaseLostError):  # a result, late: not taken
            store.finish_trial(trial.id, "lease-1", TrialState.FINISHED, now=70.0, exit_code=0)
        with pytest.raises(LeaseLostError):  # under another lease
            store.finish_trial(
                other.id, "lease-9", TrialState.LOST, now=70.0, stop_reason="interrupted (SIGTERM)"
            )
        with pytest.raises(LeaseLostError):  # lost, but not as an interruption
            store.finish_trial(other.id, "lease-2", TrialState.LOST, now=70.0, stop_reason="gone")
        late = store.finish_trial(
            trial.id, "lease-1", TrialState.LOST, now=70.0, exit_code=-15, stop_reason="interrupted (SIGTERM)"
        )
        assert (late.state, late.ended_at, late.exit_code) == (TrialState.LOST, 60.0, -15)
        assert late.stop_reason == (
            "interrupted (SIGTERM); lease expired (agent gpu-3 on box-1 stopped heartbeating)"
            " before its end was reported"
        )
        assert store.get_trial(trial.id) == late
        assert [t for t in store.list_trials(sweep.id) if t.id == trial.id] == [late], "not the one kept"
        with pytest.raises(LeaseLostError):  # said once
            store.finish_trial(
                trial.id, "lease-1", TrialState.LOST, now=80.0, stop_reason="interrupted (SIGINT)"
            )
        assert store.get_trial(other.id).stop_reason.startswith("lease expired")

    def test_extend_running_leases(self, store: Store, sweep: Sweep) -> None:
        ran_out = self.started(store, sweep, expires_at=50.0)
        later = self.started(store, sweep, lease_id="lease-2", expires_at=500.0)
        ended = self.started(store, sweep, lease_id="lease-3", expires_at=10.0)
        store.finish_trial(ended.id, "lease-3", TrialState.FAILED, now=5.0)
        extended = store.extend_running_leases(expires_at=200.0)
        assert sorted((t.id, t.lease_expires_at) for t in extended) == [
            (ran_out.id, 200.0),
            (later.id, 500.0),
        ]
        assert store.expire_leases(now=150.0) == []
        assert (
            store.renew_lease(ran_out.id, "lease-1", expires_at=300.0, now=150.0).state is TrialState.RUNNING
        )
        assert store.get_trial(ended.id).lease_expires_at == 10.0

    def test_extend_only_the_running_leases_held_at_a_time(self, store: Store, sweep: Sweep) -> None:
        silent = self.started(store, sweep, expires_at=50.0)  # ran out before 60
        held = self.started(store, sweep, lease_id="lease-2", expires_at=70.0)
        extended = store.extend_running_leases(expires_at=200.0, held_at=60.0)
        assert [(t.id, t.lease_expires_at) for t in extended] == [(held.id, 200.0)]
        assert store.get_trial(silent.id).lease_expires_at == 50.0

    def test_a_renewal_never_moves_a_lease_earlier(self, store: Store, sweep: Sweep) -> None:
        # A renewal made with the time before its process slept comes after the leases were given
        # time for the sleep: it keeps that time.
        trial = self.started(store, sweep, expires_at=50.0)
        store.extend_running_leases(expires_at=400.0)
        assert store.renew_lease(trial.id, "lease-1", expires_at=70.0, now=40.0).lease_expires_at == 400.0
        reported = store.report_metrics(
            trial.id, "lease-1", [point("loss", 0.5, 0, 1)], expires_at=71.0, now=41.0
        )
        assert reported.lease_expires_at == 400.0
        assert (
            store.report_metrics(trial.id, "lease-1", [], expires_at=72.0, now=42.0).lease_expires_at == 400.0
        )
        assert store.expire_leases(now=300.0) == [] and store.get_trial(trial.id).lease_expires_at == 400.0
        assert store.renew_lease(trial.id, "lease-1", expires_at=500.0, now=300.0).lease_expires_at == 500.0

    def test_metric_curves_of_a_sweep(self, store: Store, sweep: Sweep) -> None:
        first = self.started(store, sweep)
        second = self.started(store, sweep, {"lr": 0.2}, lease_id="lease-2")
        self.started(store, sweep, {"lr": 0.3}, lease_id="lease-3")  # logs nothing
        other = store.create_sweep(spec={"method": "grid"}, method="grid", name="other", seed=1, now=1.0)
        elsewhere = self.started(store, other, lease_id="lease-4")
        # Out of order, with another metric, a NaN and a batch sent twice.
        batch = [point("loss", 0.5, 2, 3), point("acc", 0.9, 2, 4), point("loss", 0.9, 1, 1)]
        store.add_metrics(first.id, "lease-1", batch, now=3.0)
        store.add_metrics(first.id, "lease-1", batch, now=3.0)
        store.add_metrics(first.id, "lease-1", [point("loss", 0.7, 1, 2)], now=3.0)
        store.add_metrics(second.id, "lease-2", [point("loss", float("nan"), 0, 1)], now=3.0)
        store.add_metrics(elsewhere.id, "lease-4", [point("loss", 0.1, 0, 1)], now=3.0)
        curves = store.metric_curves(sweep.id, "loss")
        assert sorted(curves) == [first.number, second.number]
        assert [(p.step, p.seq, p.value) for p in curves[first.number]] == [
            (1, 1, 0.9),
            (1, 2, 0.7),
            (2, 3, 0.5),
        ]
        assert curves[first.number][0] == point("loss", 0.9, 1, 1)
        assert math.isnan(curves[second.number][0].value)
        assert store.metric_curves(sweep.id, "nothing") == {}

    def test_trial_curves_of_the_trials_after_a_number_and_of_chosen_ones(
        self, store: Store, sweep: Sweep
    ) -> None:
        ids = [self.started(store, sweep, {"lr": i}, lease_id=f"lease-{i}").id for i in range(1, 6)]
        other = store.create_sweep(spec={"method": "grid"}, method="grid", name="other", seed=1, now=1.0)
        elsewhere = self.started(store, other, lease_id="lease-9")
        for i, trial_id in enumerate(ids, start=1):
            if i != 4:  # trial 4 logs nothing of "loss"
                points = [point("loss", 0.5, 2, 3), point("acc", 0.9, 2, 4), point("loss", i, 1, 1)]
                store.add_metrics(trial_id, f"lease-{i}", points, now=3.0)
        store.add_metrics(ids[3], "lease-4", [point("acc", 0.1, 1, 1)], now=3.0)
        store.add_metrics(elsewhere.id, "lease-9", [point("loss", 0.1, 0, 1)], now=3.0)
        store.finish_trial(ids[1], "lease-2", TrialState.STOPPED, now=4.0)

        every = store.trial_curves(sweep.id, "loss")
        assert [(t.number, t.state) for t in every] == [
            (1, TrialState.RUNNING),
            (2, TrialState.STOPPED),
            (3, TrialState.RUNNING),
            (4, TrialState.RUNNING),
            (5, TrialState.RUNNING),
        ]
        assert [t.id for t in every] == ids
        assert every[0].history == (point("loss", 1.0, 1, 1), point("loss", 0.5, 2, 3))
        assert every[3].history == ()  # listed all the same: its state counts
        assert store.trial_curves(sweep.id, "loss") == every

        chosen = store.trial_curves(sweep.id, "loss", after=3, numbers=[1, 2])
        assert [t.number for t in chosen] == [1, 2, 4, 5]
        assert chosen == [every[0], every[1], every[3], every[4]]
        # The contract's own answer, from full histories, is the same.
        assert Store.trial_curves(store, sweep.id, "loss", after=3, numbers=[1, 2]) == chosen
        assert [t.number for t in store.trial_curves(sweep.id, "loss", after=5)] == []
        assert [t.number for t in store.trial_curves(sweep.id, "loss", after=5, numbers=[3])] == [3]
        assert [t.history for t in store.trial_curves(sweep.id, "acc", after=3)] == [
            (point("acc", 0.1, 1, 1),),
            (point("acc", 0.9, 2, 4),),
        ]

    # --- concurrency --------------------------------------------------------

    def check_all_slots_once(self, store: Store, sweep: Sweep, claimed: Sequence[int]) -> None:
        trials = store.list_trials(sweep.id)
        assert sorted(t.config["slot"] for t in trials) == list(range(SLOTS))
        assert [t.number for t in trials] == list(range(1, SLOTS + 1))
        assert sorted(claimed) == list(range(SLOTS))

    def test_threads_never_share_a_slot(self, store: Store, sweep: Sweep) -> None:
        start, claimed, errors = threading.Barrier(8), queue.Queue[int](), queue.Queue[BaseException]()

        def worker(name: str) -> None:
            try:
                start.wait(30)
                n = 0
                while t := store.new_trial(
                    sweep.id, lowest_free_slot, lease=lease(name, f"{name}-{n}", FAR), now=2.0
                ):
                    claimed.put(t.config["slot"])
                    n += 1
            except BaseException as exc:
                errors.put(exc)

        threads = [threading.Thread(target=worker, args=(f"thread-{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors.empty(), errors.get()
        self.check_all_slots_once(store, sweep, list(claimed.queue))

    def test_processes_never_share_a_slot(self, store: Store, sweep: Sweep, store_url: str) -> None:
        found = run_processes(claim_until_full, [(store_url, sweep.id, f"proc-{i}") for i in range(4)])
        assert all(isinstance(slots, list) for slots in found.values()), found
        self.check_all_slots_once(store, sweep, [slot for slots in found.values() for slot in slots])

    def test_processes_create_the_schema_together(self, store_url: str) -> None:
        found = run_processes(open_and_create, [(store_url, f"proc-{i}") for i in range(4)])
        with open_store(store_url) as store:
            assert sorted(s.id for s in store.list_sweeps()) == sorted(found.values())


def _exit_code_of_child(pid: int, timeout: float = 60.0) -> int:
    """A forked child's exit code; one still running after ``timeout`` seconds (blocked on a lock
    the fork copied held, say) is killed and the test fails, instead of hanging."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the forked child was still running after {timeout:.0f} s")
