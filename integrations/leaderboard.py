"""The sweep-level record's files: leaderboard (CSV and JSON) and a best-so-far plot (PNG)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sweeper.integrations.base import Leaderboard


def flat(config: object, prefix: str = "") -> dict[str, object]:
    """Nested config as ``{"optimizer.momentum": 0.9}``."""
    out: dict[str, object] = {}
    if isinstance(config, dict) or hasattr(config, "items"):
        for key, value in config.items():  # type: ignore[union-attr]
            name = f"{prefix}{key}"
            if hasattr(value, "items") and value:
                out.update(flat(value, name + "."))
            else:
                out[name] = value
    return out


def board_rows(board: Leaderboard) -> list[dict[str, object]]:
    """One dict per trial, best first: rank, trial, state, the metric, then the flattened config."""
    rows = []
    for rank, row in enumerate(board.ranked(), start=1):
        rows.append(
            {
                "rank": rank,
                "trial": row.number,
                "state": row.state,
                board.metric_name or "value": row.value,
                **{f"config.{k}": v for k, v in flat(row.config).items()},
            }
        )
    return rows


def board_csv(board: Leaderboard) -> str:
    rows = board_rows(board)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns) or ["rank"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_board_files(board: Leaderboard, folder: Path) -> list[Path]:
    """leaderboard.csv, leaderboard.json and best_so_far.png (when matplotlib is there) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "leaderboard.csv"
    csv_path.write_text(board_csv(board), encoding="utf-8")
    json_path = folder / "leaderboard.json"
    payload = {
        "sweep_id": board.sweep_id,
        "metric": board.metric_name,
        "goal": board.goal,
        "trials": board_rows(board),
    }
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    paths = [csv_path, json_path]
    png = plot_best_so_far(board, folder / "best_so_far.png")
    if png is not None:
        paths.append(png)
    return paths


def plot_best_so_far(board: Leaderboard, path: Path) -> Path | None:
    """Each trial's final value and the best so far, by trial number. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        return None
    scored = [(r.number, r.value) for r in board.rows if r.value is not None and r.value == r.value]
    best = board.best_so_far()
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    if scored:
        ax.scatter([n for n, _ in scored], [v for _, v in scored], s=14, alpha=0.6, label="trial")
    if best:
        ax.step([n for n, _ in best], [v for _, v in best], where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(board.metric_name or "value")
    ax.set_title(f"sweep {board.sweep_id} ({board.goal})")
    if scored:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path
