"""The PyTorch parts every neural example repeats: device, seeding, optimiser, the epoch loop.

The data sets are small, so the whole split lives on the device as two tensors and an epoch
is a loop over shuffled index batches: no DataLoader, no worker processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


def pick_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup(seed: int, threads: int = 1) -> torch.device:
    """Seed torch, keep it to ``threads`` CPU threads (agents often run side by side), pick the device."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    device = pick_device()
    shown = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    print(f"training on {shown}", flush=True)
    return device


def to_device(device: torch.device, *arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(a).to(device) for a in arrays]


def make_optimizer(
    name: str, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """``adam``, ``adamw``, ``sgd`` (with momentum), ``rmsprop`` or ``adagrad``; ``weight_decay`` is L2."""
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; use adam, adamw, sgd, rmsprop or adagrad")


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> float:
    """One pass over ``x`` in shuffled batches; returns the mean cross-entropy (without ``penalty``)."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    order = torch.randperm(len(x), device=x.device)
    total = 0.0
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        loss = loss_fn(model(x[idx]), y[idx])
        objective = loss + penalty() if penalty is not None else loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    return total / len(x)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy and accuracy on ``x, y``."""
    model.eval()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, acc


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Sequence[torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    log: Callable[..., Any],
    start: int = 0,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> None:
    """Train epochs ``start .. epochs-1`` on ``data`` (x_train, x_val, y_train, y_val), calling
    ``log({"val_acc", "val_loss", "train_loss"}, step=epoch)`` after each; a diverged loss ends it."""
    x_train, x_val, y_train, y_val = data
    for epoch in range(start, epochs):
        train_loss = train_epoch(model, optimizer, x_train, y_train, batch_size, penalty)
        if not math.isfinite(train_loss):
            print(f"epoch {epoch}: the loss diverged (learning rate too high?); stopping")
            break
        val_loss, val_acc = evaluate(model, x_val, y_val)
        log({"val_acc": val_acc, "val_loss": val_loss, "train_loss": train_loss}, step=epoch)
        print(f"epoch {epoch}: train_loss={train_loss:.4f} val_loss={val_loss:.4f} val_acc={val_acc:.4f}")
