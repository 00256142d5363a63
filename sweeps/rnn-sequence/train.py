"""An LSTM or GRU reading each 8x8 digit as a sequence of 8 rows: the recurrent hyperparameters.

Tunable: cell type (LSTM or GRU), hidden state size, number of recurrent layers, recurrent
dropout, bidirectionality, plus learning rate, batch size, epochs, optimizer.

Written the W&B way, to show that such a script runs unchanged under sweeper: the values come
from ``wandb.config`` (and as ``--key=value`` arguments), metrics go to ``wandb.log``.
It runs offline unless WANDB_MODE says otherwise, so no W&B account is needed.

    python train.py
    python train.py --epochs=3 --cell=gru --bidirectional=True
    sweeper run sweeps/rnn-sequence/grid.yaml
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import wandb
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # sweeps/, for the shared helpers
from common.args import config_from_args  # noqa: E402
from common.data import digits  # noqa: E402
from common.training import fit, make_optimizer, setup, to_device  # noqa: E402

DEFAULTS = {
    "cell": "lstm",  # lstm | gru
    "hidden_size": 64,
    "num_layers": 1,
    "recurrent_dropout": 0.1,  # dropout on the hidden state carried from one timestep to the next
    "bidirectional": False,
    "learning_rate": 1e-2,
    "batch_size": 64,
    "epochs": 20,
    "optimizer": "adam",
    "seed": 0,
}


class RecurrentLayer(nn.Module):
    """One direction of one layer, run step by step so that dropout can act between timesteps.

    The dropout mask is drawn once per sequence and reused at every step (variational dropout):
    a fresh mask per step would wipe out the memory the cell is meant to keep.
    """

    def __init__(self, cell: str, n_in: int, hidden: int, recurrent_dropout: float, reverse: bool) -> None:
        super().__init__()
        self.is_lstm = cell == "lstm"
        self.cell = nn.LSTMCell(n_in, hidden) if self.is_lstm else nn.GRUCell(n_in, hidden)
        self.hidden, self.p, self.reverse = hidden, recurrent_dropout, reverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, time, features) -> (batch, time, hidden)
        h = x.new_zeros(len(x), self.hidden)
        c = torch.zeros_like(h)
        mask = torch.ones_like(h)
        if self.training and self.p > 0:
            mask = torch.bernoulli(torch.full_like(h, 1 - self.p)) / (1 - self.p)
        steps = range(x.shape[1] - 1, -1, -1) if self.reverse else range(x.shape[1])
        outputs = []
        for t in steps:
            if self.is_lstm:
                h, c = self.cell(x[:, t], (h * mask, c))
            else:
                h = self.cell(x[:, t], h * mask)
            outputs.append(h)
        if self.reverse:
            outputs.reverse()
        return torch.stack(outputs, dim=1)


class SequenceClassifier(nn.Module):
    def __init__(
        self, cell: str, hidden: int, layers: int, recurrent_dropout: float, bidirectional: bool
    ) -> None:
        super().__init__()
        directions = (False, True) if bidirectional else (False,)
        width = hidden * len(directions)  # a bidirectional layer doubles the features (and parameters)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                RecurrentLayer(cell, 8 if i == 0 else width, hidden, recurrent_dropout, reverse)
                for reverse in directions
            )
            for i in range(layers)
        )
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for directions in self.layers:
            x = torch.cat([layer(x) for layer in directions], dim=-1)
        return self.head(x.mean(dim=1))  # average over the 8 rows


def main() -> None:
    mode = os.environ.get("WANDB_MODE", "offline")
    run = wandb.init(project="sweeper-examples", config=config_from_args(DEFAULTS), mode=mode)
    cfg = wandb.config
    print("config:", json.dumps(dict(cfg)), flush=True)
    device = setup(int(cfg.seed))

    data = to_device(device, *digits("rows"))
    model = SequenceClassifier(
        cfg.cell,
        int(cfg.hidden_size),
        int(cfg.num_layers),
        float(cfg.recurrent_dropout),
        bool(cfg.bidirectional),
    ).to(device)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), float(cfg.learning_rate))

    fit(model, optimizer, data, epochs=int(cfg.epochs), batch_size=int(cfg.batch_size), log=wandb.log)
    run.finish()


if __name__ == "__main__":
    main()
