"""A small Transformer encoder reading each 8x8 digit as 8 row tokens: the attention hyperparameters.

Tunable: number of attention heads, number of layers, embedding dimension, feed-forward size,
plus dropout, learning rate, batch size, epochs. ``embed_dim`` must be a multiple of ``heads``.
Logs ``val_acc``, ``val_loss`` and ``train_loss`` after every epoch through the sweeper API.

    python train.py
    python train.py --epochs=3 --heads=2 --layers=1
    sweeper run sweeps/transformer-sequence/random.yaml
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
    "heads": 4,
    "layers": 2,
    "embed_dim": 32,
    "ff_size": 64,  # width of the feed-forward block inside each layer
    "dropout": 0.1,
    "learning_rate": 2e-3,
    "batch_size": 64,
    "epochs": 20,
    "optimizer": "adamw",
    "l2": 1e-2,
    "seed": 0,
}


class RowTransformer(nn.Module):
    """Each row of 8 pixels becomes a token; a learned [CLS] token gathers the answer."""

    def __init__(self, heads: int, layers: int, embed_dim: int, ff_size: int, dropout: float) -> None:
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of heads ({heads})")
        self.embed = nn.Linear(8, embed_dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.position = nn.Parameter(torch.randn(1, 9, embed_dim) * 0.02)  # [CLS] + 8 rows
        layer = nn.TransformerEncoderLayer(
            embed_dim, heads, ff_size, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, 10)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:  # (batch, 8, 8) -> (batch, 10)
        tokens = torch.cat([self.cls.expand(len(rows), -1, -1), self.embed(rows)], dim=1)
        encoded = self.encoder(tokens + self.position)
        return self.head(self.norm(encoded[:, 0]))


def main() -> None:
    run = sweeper.init(config=config_from_args(DEFAULTS))
    cfg = run.config
    device = setup(int(cfg.seed))

    data = to_device(device, *digits("rows"))
    model = RowTransformer(
        int(cfg.heads), int(cfg.layers), int(cfg.embed_dim), int(cfg.ff_size), float(cfg.dropout)
    ).to(device)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), float(cfg.learning_rate), float(cfg.l2))

    fit(model, optimizer, data, epochs=int(cfg.epochs), batch_size=int(cfg.batch_size), log=run.log)
    run.finish()


if __name__ == "__main__":
    main()
