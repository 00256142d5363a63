"""An unchanged W&B training script: it only knows wandb."""

import json

import wandb

run = wandb.init(mode="offline")
print("WANDB_CONFIG=" + json.dumps(dict(wandb.config)), flush=True)
print("WANDB_PROJECT_OF_RUN=" + str(run.project), flush=True)
run.finish()
