"""Data-parallel training of an MLP on scikit-learn's digits: one trial, several processes.

The sweep's command starts this script under torchrun (``python -m torch.distributed.run``).
Every process holds the whole model and trains on its share of each batch; DistributedDataParallel
averages the gradients between them, so all of them keep the same weights. Rank 0 reports
``val_acc``, ``val_loss`` and ``train_loss`` to sweeper after every epoch; the others only train.

With GPUs, ``--gpus all --gpus-per-trial 2`` gives each trial two GPUs of its own
(``CUDA_VISIBLE_DEVICES``), and each process takes one of them (NCCL). With fewer GPUs visible than
processes (none, or ``--gpus all`` alone: one a trial) they train on the CPU (gloo).
``--standalone`` gives each trial's processes a port of their own, so several trials run side by
side on one machine.

    python -m torch.distributed.run --standalone --nproc-per-node=2 train.py --epochs=3
    sweeper run sweeps/ddp-digits/random.yaml
    sweeper run sweeps/ddp-digits/random.yaml --gpus all --gpus-per-trial 2
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # sweeps/, for the shared helpers
from common.args import config_from_args  # noqa: E402
from common.data import digits  # noqa: E402
from common.training import evaluate, make_optimizer, to_device  # noqa: E402

import sweeper  # noqa: E402

DEFAULTS = {
    "hidden_units": 128,
    "learning_rate": 1e-3,
    "batch_size": 64,  # the whole batch, shared out between the processes
    "epochs": 10,
    "optimizer": "adam",
    "seed": 0,
}


def start_process_group() -> torch.device:
    """Join the trial's processes; this process's device: a GPU of its own when the trial has one
    for each of its processes (``--gpus-per-trial``), else the CPU."""
    if "LOCAL_RANK" not in os.environ:
        raise SystemExit(
            "run under torchrun: python -m torch.distributed.run --standalone --nproc-per-node=2 train.py"
        )
    if torch.cuda.device_count() >= int(os.environ["LOCAL_WORLD_SIZE"]):
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        dist.init_process_group("gloo")
    return device


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x, y, batch_size: int) -> float:
    """One pass over the data; this process takes every world_size-th example of each batch. The
    mean training loss over every process's share."""
    model.train()
    rank, world = dist.get_rank(), dist.get_world_size()
    order = torch.randperm(len(x), device=x.device)  # the same on every process: same seed
    total = torch.zeros(2, device=x.device)  # loss sum, examples
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size][rank::world]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over the processes here
        optimizer.step()
        total += torch.stack([loss.detach() * len(idx), torch.tensor(float(len(idx)), device=x.device)])
    dist.all_reduce(total)
    return (total[0] / total[1]).item()


def main() -> None:
    cfg = config_from_args(DEFAULTS)
    device = start_process_group()
    torch.manual_seed(int(cfg["seed"]))  # the same initial weights on every process
    rank = dist.get_rank()
    run = sweeper.init(config=cfg) if rank == 0 else None
    x_train, x_val, y_train, y_val = to_device(device, *digits("flat"))
    hidden = int(cfg["hidden_units"])
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)).to(device)
    model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(cfg["optimizer"], model.parameters(), float(cfg["learning_rate"]))
    if rank == 0:
        print(f"training on {dist.get_world_size()} process(es), {device.type}", flush=True)
    for epoch in range(int(cfg["epochs"])):
        train_loss = train_epoch(model, optimizer, x_train, y_train, int(cfg["batch_size"]))
        if not math.isfinite(train_loss):
            break  # every process sees the same loss, so all of them stop here
        if run is not None:
            val_loss, val_acc = evaluate(model.module, x_val, y_val)
            run.log({"val_acc": val_acc, "val_loss": val_loss, "train_loss": train_loss}, step=epoch)
            print(f"epoch {epoch}: train_loss={train_loss:.4f} val_loss={val_loss:.4f} val_acc={val_acc:.4f}")
    if run is not None:
        run.finish()
    # No process leaves while another still uses the group: a peer's closed connection can abort
    # a process of gloo's that is still tearing down.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
