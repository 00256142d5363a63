"""A PyTorch MLP on scikit-learn's handwritten digits: the core hyperparameters.

Tunable: learning rate, batch size, number of epochs, optimizer, activation, dropout rate,
L1 and L2 regularisation, weight initialisation (and the network's width and depth).
Logs ``val_acc``, ``val_loss`` and ``train_loss`` after every epoch through the sweeper API.

    python train.py                      # the defaults below
    python train.py --epochs=3 --optimizer=sgd --learning_rate=0.05
    sweeper run sweeps/mlp-core/random.yaml   # as sweep trials: the sweep's values replace the defaults

With ``checkpoint`` on (``pbt.yaml`` sets it), every epoch is saved to ``run.checkpoint_dir`` and a
trial resumes from ``run.restore_from`` when it is given one: what population-based training needs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # sweeps/, for the shared helpers
from common.args import config_from_args  # noqa: E402
from common.data import digits  # noqa: E402
from common.training import fit, make_optimizer, setup, to_device  # noqa: E402

import sweeper  # noqa: E402

DEFAULTS = {
    "learning_rate": 1e-3,
    "batch_size": 64,
    "epochs": 20,
    "optimizer": "adam",  # adam | adamw | sgd | rmsprop | adagrad
    "momentum": 0.9,  # for sgd and rmsprop
    "activation": "relu",  # relu | tanh | gelu | leaky_relu | elu
    "dropout": 0.1,
    "l1": 0.0,  # weight of the L1 penalty added to the loss
    "l2": 1e-4,  # weight decay (L2), applied by the optimiser
    "init": "kaiming",  # kaiming | xavier | orthogonal | normal | default
    "hidden_units": 128,
    "hidden_layers": 2,
    "seed": 0,
    "checkpoint": False,  # save every epoch and resume from a given checkpoint (population-based training)
}

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}


def build_mlp(
    n_in: int, n_out: int, units: int, layers: int, activation: str, dropout: float
) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [
            nn.Linear(n_in if i == 0 else units, units),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
        ]
    blocks.append(nn.Linear(units if layers else n_in, n_out))
    return nn.Sequential(*blocks)


def initialise(model: nn.Module, scheme: str) -> None:
    """Re-draw every Linear weight with ``scheme``; biases start at zero. ``default`` keeps PyTorch's."""
    if scheme == "default":
        return
    draw = {
        "kaiming": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
        "xavier": nn.init.xavier_uniform_,
        "orthogonal": nn.init.orthogonal_,
        "normal": lambda w: nn.init.normal_(w, std=0.05),
    }[scheme]
    for module in model.modules():
        if isinstance(module, nn.Linear):
            draw(module.weight)
            nn.init.zeros_(module.bias)


def main() -> None:
    run = sweeper.init(config=config_from_args(DEFAULTS))
    cfg = run.config
    device = setup(int(cfg.seed))

    data = to_device(device, *digits("flat"))
    model = build_mlp(
        64, 10, int(cfg.hidden_units), int(cfg.hidden_layers), cfg.activation, float(cfg.dropout)
    )
    initialise(model, cfg.init)
    model.to(device)
    optimizer = make_optimizer(
        cfg.optimizer, model.parameters(), float(cfg.learning_rate), float(cfg.l2), float(cfg.momentum)
    )
    # L1 is not an optimiser option: add the sum of absolute weights to the loss.
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    l1 = float(cfg.l1)
    penalty = (lambda: l1 * sum(w.abs().sum() for w in weights)) if l1 > 0 else None

    start = 0
    if cfg.checkpoint and run.restore_from is not None:
        # A better member's weights and optimiser state; this trial's (explored) learning rate applies.
        state = torch.load(run.restore_from / "ckpt.pt", map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = float(cfg.learning_rate)
        start = state["epoch"] + 1

    def save_then_log(values: dict[str, float], step: int) -> None:
        # Saved before logging: the log call takes a copy of the checkpoint for the agent to publish.
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": step}
        torch.save(state, run.checkpoint_dir / "ckpt.pt")
        run.log(values, step=step)

    fit(
        model,
        optimizer,
        data,
        epochs=int(cfg.epochs),
        batch_size=int(cfg.batch_size),
        log=save_then_log if cfg.checkpoint else run.log,
        start=start,
        penalty=penalty,
    )
    run.finish()


if __name__ == "__main__":
    main()
