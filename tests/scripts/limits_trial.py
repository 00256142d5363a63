"""Runs too long (``slow``: logs a value every 0.2 s without end), hangs (``hang``: logs once, then
waits without a word), or keeps printing without logging (``chatty``: a line every 0.3 s for 3 s,
never flushed, so the lines reach the file as they are printed only when Python is unbuffered)."""

import time

import sweeper

run = sweeper.init(config={"mode": "slow"})
mode = run.config.mode
if mode == "slow":
    step = 0
    while True:
        run.log({"loss": 1.0 / (step + 1)}, step=step)
        step += 1
        time.sleep(0.2)
elif mode == "hang":
    print("starting", flush=True)
    run.log({"loss": 1.0}, step=0)
    time.sleep(600)
else:
    for i in range(10):
        print(f"still working {i}")  # not flushed: buffered unless the agent asks for unbuffered
        time.sleep(0.3)
    run.log({"loss": 0.5}, step=0)
run.finish()
