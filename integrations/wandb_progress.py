"""How far a sweep-level W&B run got: the trials it logged and its next step, kept on disk.

A restarted ``sweeper server`` (or a second ``sweeper.agent`` on the same sweep) resumes the run
under the same id, but the new process knows nothing of what the last one logged, and an offline
run resumed under the same id starts again at step 0. This file, next to the runs it describes,
lets the new process carry on: it logs only trials not logged yet, at steps after the last one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sweeper.files import write_atomic

log = logging.getLogger("sweeper.integrations")


@dataclass
class SweepRunProgress:
    path: Path
    trials: set[int] = field(default_factory=set)  # trial numbers with a history row
    next_step: int = 0

    @classmethod
    def load(cls, path: Path) -> SweepRunProgress:
        """What an earlier process wrote; nothing (a fresh start) when there is no readable file."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(path, {int(n) for n in data["trials"]}, int(data["next_step"]))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("W&B: cannot read %s (%s); the sweep run's history may repeat", path, exc)
            return cls(path)

    def save(self) -> None:
        """Written whole, then renamed: a crash leaves the old file or the new one, never half of one.

        A failure is logged, not raised: the rows are logged already, and a retried call would
        log them again; only a later process would repeat them.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            progress = {"trials": sorted(self.trials), "next_step": self.next_step}
            write_atomic(self.path, json.dumps(progress) + "\n")
        except OSError as exc:
            log.warning(
                "W&B: cannot write %s (%s); after a restart the sweep run may repeat rows", self.path, exc
            )


def progress_path(wandb_dir: str, sweep_id: str) -> Path:
    """Beside the offline runs (``<dir>/wandb/``), one file per sweep."""
    return Path(wandb_dir) / "wandb" / f"sweeper-sweep-{sweep_id}.json"
