"""The idle gap an agent leaves between one trial's end and the next trial's start.

The same small script runs N times two ways in the same run: by ``sweeper agent`` against a real
``sweeper server`` over HTTP (a grid of N points), and by a plain loop that starts it back to
back with ``subprocess.run``. The overhead ratio is agent wall time over loop wall time; the gap
per trial is the difference divided by N. (W&B's own ``wandb agent`` needs its cloud service,
so it cannot run here offline.)

    nice python bench/agent_gap.py --trials 30 [--method bayes]

The sweep is a grid of N points, or with ``--method bayes`` the same N values searched by
Bayesian optimisation, whose model fit between trials is part of the gap.
Writes bench/results/agent_gap.json (agent_gap_bayes.json with ``--method bayes``) for the
reported 30 trials, and a file named by the trial count for any other (``--out`` names it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

SCRIPT = """\
import sweeper
run = sweeper.init(config={"i": 0})
run.log({"score": float(run.config.i)})
run.finish()
"""


TRIALS = 30


def results_stem(method: str, trials: int) -> str:
    """The results' file name: the reported runs (30 trials) keep ``agent_gap`` and
    ``agent_gap_bayes``; another trial count gets its own, so it never overwrites them."""
    stem = "agent_gap" if method == "grid" else f"agent_gap_{method}"
    return stem if trials == TRIALS else f"{stem}-{trials}trials"


def main(argv: list[str] | None = None) -> None:
    from server_helpers import TOKEN, start_server

    from sweeper.spec import parse_sweep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--method", choices=("grid", "bayes"), default="grid")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.trials < 2:  # the gap is between one trial's end and the next one's start
        parser.error(f"--trials must be at least 2, not {args.trials}")
    out = args.out or HERE / "results" / f"{results_stem(args.method, args.trials)}.json"
    sweeper_exe = str(Path(sys.executable).parent / "sweeper")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        script = folder / "train.py"
        script.write_text(SCRIPT)

        t0 = time.perf_counter()
        for i in range(args.trials):
            subprocess.run([sys.executable, str(script), f"--i={i}"], check=True, cwd=folder)
        loop_s = time.perf_counter() - t0

        server = start_server(
            f"sqlite:///{folder / 'sweeper.db'}", folder / "server", extra_args=("--log-level", "warning")
        )
        try:
            raw = {
                "method": args.method,
                "program": str(script),
                "metric": {"name": "score", "goal": "maximize"},
                "parameters": {"i": {"values": list(range(args.trials))}},
            }
            sweep_id = server.client().create_sweep(parse_sweep(raw)).id
            env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")}
            t0 = time.perf_counter()
            subprocess.run(
                [sweeper_exe, "agent", sweep_id, "--coordinator", server.url, "--token", TOKEN],
                check=True,
                cwd=folder,
                env=env,
                capture_output=True,
            )
            agent_s = time.perf_counter() - t0
            trials = sorted(server.client().trials(sweep_id), key=lambda t: t.number)
        finally:
            server.stop()

    gaps = [
        b.created_at - a.ended_at for a, b in zip(trials, trials[1:], strict=False) if a.ended_at is not None
    ]
    result = {
        "method": args.method,
        "trials": args.trials,
        "plain_loop_s": loop_s,
        "sweeper_agent_s": agent_s,
        "overhead_ratio": agent_s / loop_s,
        "extra_per_trial_ms": (agent_s - loop_s) / args.trials * 1000,
        "store_gap_end_to_next_lease_ms": {
            "median": statistics.median(gaps) * 1000,
            "max": max(gaps) * 1000,
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
