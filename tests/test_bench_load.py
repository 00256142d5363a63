"""The load benchmark's in-process run drives whole lifecycles through the coordinator and store."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from load import in_process_run  # noqa: E402

from sweeper.store import open_store  # noqa: E402
from sweeper.trials import TrialState  # noqa: E402


def test_in_process_lifecycles_each_finish_one_trial_with_its_five_points(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'load.db'}"
    result = in_process_run(url, workers=3, seconds=0.5)
    assert result["errors"] == 0 and result["lifecycles"] > 0
    assert result["calls"] == 7 * result["lifecycles"]  # lease, 5 reports, finish
    with open_store(url) as store:
        (sweep,) = store.list_sweeps()
        trials = store.list_trials(sweep.id, with_history=True)
    assert len(trials) == result["lifecycles"]
    assert all(t.state is TrialState.FINISHED and len(t.history) == 5 for t in trials)
