"""A support vector machine on scikit-learn's breast cancer data, scored by k-fold cross-validation.

Tunable: the kernel, C (the inverse regularisation strength), gamma (the kernel width), the
polynomial degree, and the number of folds. Each fold's accuracy is logged as a step, with the
running mean ``cv_acc``: the last value is the cross-validation score the sweep ranks trials by.

Written the MLflow way, to show that such a script runs unchanged under sweeper: it reads its
values from ``--key=value`` arguments and logs with ``mlflow.log_params`` / ``mlflow.log_metric``.
Without MLFLOW_TRACKING_URI, MLflow keeps the runs in ./mlflow.db.

    python train.py
    python train.py --kernel=linear --C=0.1
    sweeper run sweeps/sklearn-classic/grid.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # sweeps/, for the shared helpers
from common.args import config_from_args  # noqa: E402

DEFAULTS = {
    "kernel": "rbf",  # rbf | linear | poly | sigmoid
    "C": 1.0,
    "gamma": 0.03,  # for rbf, poly and sigmoid
    "degree": 3,  # for poly
    "folds": 5,
    "seed": 0,
}


def main() -> None:
    config = config_from_args(DEFAULTS)
    x, y = load_breast_cancer(return_X_y=True)
    folds = StratifiedKFold(n_splits=int(config["folds"]), shuffle=True, random_state=int(config["seed"]))

    with mlflow.start_run():
        mlflow.log_params(config)
        scores: list[float] = []
        for fold, (train, val) in enumerate(folds.split(x, y)):
            # The scaler is fit on each training part only, so no fold sees its own test data.
            model = make_pipeline(
                StandardScaler(),
                SVC(
                    kernel=config["kernel"],
                    C=float(config["C"]),
                    gamma=float(config["gamma"]),
                    degree=int(config["degree"]),
                ),
            )
            model.fit(x[train], y[train])
            scores.append(float(model.score(x[val], y[val])))
            mlflow.log_metric("fold_acc", scores[-1], step=fold)
            mlflow.log_metric("cv_acc", float(np.mean(scores)), step=fold)  # the running CV score
            print(f"fold {fold}: acc={scores[-1]:.4f} cv_acc={np.mean(scores):.4f}")
        mlflow.log_metric("cv_std", float(np.std(scores)))


if __name__ == "__main__":
    main()
