"""An unchanged MLflow training script: it knows only argparse and mlflow."""

import argparse
import time

import mlflow

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--pause", type=float, default=0.0)
args = parser.parse_args()

with mlflow.start_run() as run:
    print("MLFLOW_RUN=" + run.info.run_id, flush=True)
    mlflow.set_tag("script", "mlflow_script")
    for epoch in range(args.epochs):
        mlflow.log_metric("loss", args.lr * (args.epochs - epoch), step=epoch)
        mlflow.log_metrics({"acc": epoch / 10, "lr_seen": args.lr}, step=epoch)
        time.sleep(args.pause)
