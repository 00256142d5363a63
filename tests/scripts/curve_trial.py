"""A trial that logs a learning curve, one value per epoch: val_loss = quality * (1 + 1 / (epoch + 1)).

Smaller ``quality`` is better at every epoch, so early stopping can judge a trial from its start.
"""

import time

import sweeper

run = sweeper.init(config={"quality": 1.0, "epochs": 10, "sleep": 0.0})
cfg = run.config
for epoch in range(int(cfg.epochs)):
    run.log({"val_loss": float(cfg.quality) * (1.0 + 1.0 / (epoch + 1)), "epoch": epoch}, step=epoch)
    time.sleep(float(cfg.sleep))
run.finish()
