"""The curves a stopping rule judges, read from the store, keeping those that can no longer change.

The store takes a trial's points only under its lease, so once the trial has ended its curve is
final, the same for every coordinator that reads it. :class:`KnownCurves` keeps the curves of
ended trials (with their iterations, worked out once) and asks the store on each report only for
the trials added since its last read and those running then (:meth:`Store.trial_curves`). What a
read returns is what one read of every curve at that moment returns, so a coordinator decides
the same with what it kept as without it, and as any other coordinator or a restarted one does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from sweeper.stopping.base import TrialCurve
from sweeper.store.base import Store
from sweeper.trials import Trial

# Sweeps (and metrics) whose ended curves are kept, the most recently read: each holds every point
# of its metric, as one read of every curve did on each report. A sweep that ends is dropped.
_KNOWN_SWEEPS = 16


class _SweepCurves:
    """What was read of one metric of one sweep: every trial numbered up to ``last`` is either in
    ``ended`` or in ``running``."""

    def __init__(self) -> None:
        self.last = 0  # the highest trial number read
        self.running: set[int] = set()  # trials running when last read
        self.ended: dict[int, TrialCurve | None] = {}  # None: the trial ended without a point


class KnownCurves:
    """What a coordinator keeps of the curves it read, for every sweep it decides for."""

    def __init__(self) -> None:
        self._sweeps: OrderedDict[tuple[str, str], _SweepCurves] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, store: Store, sweep_id: str, name: str) -> dict[int, TrialCurve]:
        """The curve of metric ``name`` of every trial of the sweep that logged it, by trial number
        in number order, each with its trial's record."""
        key = (sweep_id, name)
        with self._lock:
            known = self._sweeps.get(key) or _SweepCurves()
            # Every trial up to ``after`` that was not running then had ended: kept, and final.
            after, running, ended = known.last, sorted(known.running), dict(known.ended)
        read = store.trial_curves(sweep_id, name, after=after, numbers=running)
        fresh = {t.number: TrialCurve(t.number, t.history or (), t) for t in read}
        # Kept once what was read is committed: a read in a batch sees the batch's own writes
        # (a trial it ended, say), which may yet be undone.
        store.after_commit(lambda: self._keep(key, known, read, fresh))
        curves = {n: c for n, c in ended.items() if c is not None and n not in fresh}
        curves.update((n, c) for n, c in fresh.items() if c.points)
        return {n: curves[n] for n in sorted(curves)}

    def forget(self, sweep_id: str) -> None:
        """Drop what is kept of a sweep that ended: no rule judges its trials any more."""
        with self._lock:
            for key in [key for key in self._sweeps if key[0] == sweep_id]:
                del self._sweeps[key]

    def _keep(
        self, key: tuple[str, str], known: _SweepCurves, read: Sequence[Trial], fresh: dict[int, TrialCurve]
    ) -> None:
        with self._lock:
            known = self._sweeps.get(key, known)  # another read may have kept its own since
            for trial in read:
                if trial.state.is_terminal:
                    known.ended[trial.number] = fresh[trial.number] if trial.history else None
                    known.running.discard(trial.number)
                elif trial.number not in known.ended:  # else a later read saw it end
                    known.running.add(trial.number)
                known.last = max(known.last, trial.number)
            self._sweeps[key] = known
            self._sweeps.move_to_end(key)
            while len(self._sweeps) > _KNOWN_SWEEPS:
                self._sweeps.popitem(last=False)
