"""A fast trial for end-to-end tests. Behaviour comes from its config:

x, y: any values (logged into the score); fail_when: exit 3 when x equals it;
sleep: seconds to sleep per epoch; pid_dir: write this pid (and a grandchild's) there.
"""

import os
import subprocess
import sys
import time

import sweeper

run = sweeper.init(config={"x": 1, "y": 1, "epochs": 3, "sleep": 0.0, "fail_when": None, "pid_dir": None})
cfg = run.config
if cfg.pid_dir:
    # A grandchild in the same process group, as a data-loader worker or torchrun child would be.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.path.join(cfg.pid_dir, f"{os.getpid()}.pids"), "w") as f:
        f.write(f"{os.getpid()} {child.pid}\n")
if cfg.fail_when is not None and cfg.x == cfg.fail_when:
    print(f"refusing x={cfg.x}", file=sys.stderr)
    sys.exit(3)
for epoch in range(int(cfg.epochs)):
    run.log({"score": float(cfg.x) * 10 + float(cfg.y) + epoch, "epoch": epoch})
    time.sleep(float(cfg.sleep))
run.finish()
