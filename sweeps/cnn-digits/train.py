"""A small CNN on scikit-learn's digits seen as 1x8x8 images: the convolutional hyperparameters.

Tunable: number of filters, kernel size, stride, pooling, number of convolutional layers,
plus the core ones (learning rate, batch size, epochs, optimizer, dropout, L2).
Logs ``val_acc``, ``val_loss`` and ``train_loss`` after every epoch through the sweeper API.

    python train.py
    python train.py --epochs=3 --conv_layers=3 --pooling=avg
    sweeper run sweeps/cnn-digits/random.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # sweeps/, for the shared helpers
from common.args import config_from_args  # noqa: E402
from common.data import digits  # noqa: E402
from common.training import fit, make_optimizer, setup, to_device  # noqa: E402

import sweeper  # noqa: E402

DEFAULTS = {
    "filters": 16,  # filters of the first layer; each further layer doubles them
    "kernel_size": 3,
    "stride": 1,
    "pooling": "max",  # max | avg | none: a 2x2 pooling after each layer while the map is 2x2 or larger
    "conv_layers": 2,
    "dropout": 0.2,  # before the classifier
    "learning_rate": 2e-3,
    "batch_size": 64,
    "epochs": 15,
    "optimizer": "adam",
    "l2": 1e-4,
    "seed": 0,
}


def build_cnn(
    filters: int, kernel_size: int, stride: int, pooling: str, layers: int, dropout: float
) -> nn.Module:
    pools = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
    blocks: list[nn.Module] = []
    channels, side = 1, 8
    for i in range(layers):
        out = filters * 2**i
        # "same" padding, so only the stride and the pooling shrink the 8x8 map
        blocks += [nn.Conv2d(channels, out, kernel_size, stride=stride, padding=kernel_size // 2), nn.ReLU()]
        side = (side + 2 * (kernel_size // 2) - kernel_size) // stride + 1
        if pooling != "none" and side >= 2:
            blocks.append(pools[pooling](2))
            side //= 2
        channels = out
    blocks += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * side * side, 10)]
    return nn.Sequential(*blocks)


def main() -> None:
    run = sweeper.init(config=config_from_args(DEFAULTS))
    cfg = run.config
    device = setup(int(cfg.seed))

    data = to_device(device, *digits("image"))
    model = build_cnn(
        int(cfg.filters),
        int(cfg.kernel_size),
        int(cfg.stride),
        cfg.pooling,
        int(cfg.conv_layers),
        float(cfg.dropout),
    ).to(device)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), float(cfg.learning_rate), float(cfg.l2))

    fit(model, optimizer, data, epochs=int(cfg.epochs), batch_size=int(cfg.batch_size), log=run.log)
    run.finish()


if __name__ == "__main__":
    main()
