"""An unchanged W&B training script, as `wandb agent` runs it: arguments and wandb.config."""

import argparse
import json
import time

import wandb

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--pause", type=float, default=0.0)
args = parser.parse_args()

run = wandb.init()
assert wandb.config.lr == args.lr, (dict(wandb.config), args)
print("SEEN=" + json.dumps({"args": vars(args), "config": dict(wandb.config)}), flush=True)
for epoch in range(wandb.config.epochs):
    wandb.log({"loss": wandb.config.lr * (wandb.config.epochs - epoch), "acc": epoch / 10})
    time.sleep(args.pause)
run.finish()
