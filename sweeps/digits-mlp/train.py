"""A small real training run: a scikit-learn MLP on the handwritten digits that ship with
scikit-learn (no download). Logs validation accuracy and training loss after every epoch.

Runs standalone with its own defaults (``python train.py``) or as a sweep trial
(``sweeper run sweeps/digits-mlp/grid.yaml``), where the sweep's values replace the defaults.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

import sweeper

DEFAULTS = {
    "hidden_units": 64,
    "activation": "relu",
    "learning_rate": 1e-3,
    "alpha": 1e-4,  # L2 penalty
    "batch_size": 64,
    "epochs": 15,
    "seed": 0,
}


def main() -> None:
    run = sweeper.init(config=DEFAULTS)
    cfg = run.config

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    scaler = StandardScaler().fit(x_train)
    x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)

    model = MLPClassifier(
        hidden_layer_sizes=(int(cfg.hidden_units),),
        activation=cfg.activation,
        learning_rate_init=float(cfg.learning_rate),
        alpha=float(cfg.alpha),
        batch_size=int(cfg.batch_size),
        max_iter=1,  # one epoch per fit call; we drive the epochs
        warm_start=True,
        random_state=int(cfg.seed),
    )
    classes = np.unique(y)
    for epoch in range(int(cfg.epochs)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.partial_fit(x_train, y_train, classes=classes)
        val_acc = float(model.score(x_val, y_val))
        run.log({"val_acc": val_acc, "train_loss": float(model.loss_)}, step=epoch)

    run.summary["val_acc"] = val_acc
    print(f"val_acc={val_acc:.4f}")
    run.finish()


if __name__ == "__main__":
    main()
