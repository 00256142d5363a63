"""A population-based training member: gradient steps on w toward a target, with a checkpoint.

The score is -(w - 3)**2, so a larger ``lr`` converges faster. Each step saves
``{"step", "w", "lr", "trial"}`` into ``run.checkpoint_dir`` before logging (save, then log), and a
restarted member resumes from ``run.restore_from``: its first step is the donor's step + 1.
"""

import json
import os
import time
from pathlib import Path

import sweeper

run = sweeper.init(config={"lr": 0.1, "steps": 12, "sleep": 0.0, "pid_dir": ""})
cfg = run.config
if cfg.pid_dir:  # for a test that kills the trial's process group with its agent
    (Path(cfg.pid_dir) / f"{run.trial_number}.pids").write_text(str(os.getpgrp()))
step, w, origin = 0, 0.0, None
if run.restore_from is not None:
    saved = json.loads((run.restore_from / "state.json").read_text())
    step, w, origin = saved["step"] + 1, saved["w"], saved["trial"]
    print(f"restored from trial {origin} at step {saved['step']}", flush=True)
while step < int(cfg.steps):
    w -= float(cfg.lr) * 2 * (w - 3.0)
    state = {"step": step, "w": w, "lr": float(cfg.lr), "trial": run.trial_number, "origin": origin}
    tmp = run.checkpoint_dir / "state.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, run.checkpoint_dir / "state.json")
    run.log({"score": -((w - 3.0) ** 2), "w": w}, step=step)
    step += 1
    time.sleep(float(cfg.sleep))
run.finish()
