"""A trial script the agent tests run. Its behaviour comes from the trial's config."""

import os
import signal
import subprocess
import sys
import time

import sweeper

run = sweeper.init(
    {
        "steps": 3,
        "pause": 0.0,
        "exit_code": 0,
        "hang": False,
        "child": False,
        "session_child": False,
        "write_pid": False,
    }
)
cfg = run.config
if cfg.write_pid:  # for a test that signals the trial itself
    with open(os.path.join(str(run.dir), "pid.tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.path.join(str(run.dir), "pid.tmp"), os.path.join(str(run.dir), "pid"))

if cfg.child or cfg.session_child:
    # A grandchild that ignores SIGTERM, as a stubborn dataloader worker would.
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "open(sys.argv[1] + '.tmp', 'w').write(str(__import__('os').getpid()));"
        "__import__('os').replace(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(1000)"
    )
    pid_file = os.path.join(str(run.dir), "child.pid")
    # In the trial's process group, or (as torchrun starts its workers) in a session of its own.
    subprocess.Popen([sys.executable, "-c", code, pid_file], start_new_session=bool(cfg.session_child))
    while not os.path.exists(pid_file):  # log nothing until the grandchild is there to be stopped
        time.sleep(0.01)

for i in range(int(cfg.steps)):
    sweeper.log({"loss": 1.0 / (i + 1), "acc": i / 10})
    time.sleep(float(cfg.pause))

print("config:", dict(run.config.as_dict()), flush=True)
if cfg.hang:
    signal.pause()
if cfg.exit_code:
    print("something went wrong in the trial", file=sys.stderr, flush=True)
sys.exit(int(cfg.exit_code))
