"""Saves a checkpoint the way torch.save does (one file, written in place, in pieces), then logs.

Every byte of the file written at step ``i`` is ``i``, so a copy taken while it is being
rewritten is seen at once: it is short, or it mixes two values.
"""

import time

import sweeper

SIZE = 64 * 1024
PIECES = 8

run = sweeper.init(config={"steps": 40})
for step in range(int(run.config.steps)):
    with open(run.checkpoint_dir / "ckpt.bin", "wb") as fh:
        for _ in range(PIECES):
            fh.write(bytes([step]) * (SIZE // PIECES))
            fh.flush()
            time.sleep(0.002)
    run.log({"step_done": step}, step=step)
run.finish()
