"""The built-in example jobs: small Keras models on datasets that ship with scikit-learn, so
they run anywhere without a download (`keras.datasets` would fetch from the internet)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULTS: dict[str, Any] = {"epochs": 5, "batch_size": 32, "learning_rate": 0.001,
                            "validation_split": 0.2, "seed": 42}


@dataclass(frozen=True)
class Dataset:
    name: str      # recorded as the MLflow dataset input's name
    source: str    # where it came from, recorded as the input's source
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Example:
    load: Callable[[], Dataset]
    build: Callable[[Dataset, dict[str, Any]], Any]  # -> a compiled keras.Model


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., np.newaxis]  # 8x8 grey images
    return Dataset("sklearn-digits", "sklearn.datasets.load_digits", x, data.target.astype("int64"))


def _breast_cancer() -> Dataset:
    from sklearn.datasets import load_breast_cancer
    data = load_breast_cancer()
    return Dataset("sklearn-breast-cancer", "sklearn.datasets.load_breast_cancer",
                   data.data.astype("float32"), data.target.astype("float32"))


def _diabetes() -> Dataset:
    from sklearn.datasets import load_diabetes
    data = load_diabetes()
    return Dataset("sklearn-diabetes", "sklearn.datasets.load_diabetes",
                   data.data.astype("float32"), data.target.astype("float32"))


def _optimizer(params: dict[str, Any]):
    import keras
    return keras.optimizers.Adam(learning_rate=float(params["learning_rate"]))


def _cnn(data: Dataset, params: dict[str, Any]):
    import keras
    model = keras.Sequential([
        keras.Input(shape=data.x.shape[1:]),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax", dtype="float32"),
    ])
    model.compile(optimizer=_optimizer(params), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _mlp(data: Dataset, params: dict[str, Any], output: str):
    import keras
    normalize = keras.layers.Normalization()
    normalize.adapt(data.x)  # tabular features of very different scales
    head = (keras.layers.Dense(1, activation="sigmoid", dtype="float32") if output == "binary"
            else keras.layers.Dense(1, dtype="float32"))
    model = keras.Sequential([keras.Input(shape=data.x.shape[1:]), normalize,
                              keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(16, activation="relu"), head])
    if output == "binary":
        model.compile(optimizer=_optimizer(params), loss="binary_crossentropy",
                      metrics=["accuracy"])
    else:
        model.compile(optimizer=_optimizer(params), loss="mse", metrics=["mae"])
    return model


EXAMPLES: dict[str, Example] = {
    "digits-cnn": Example(_digits, _cnn),
    "breast-cancer-mlp": Example(_breast_cancer, lambda d, p: _mlp(d, p, "binary")),
    "diabetes-mlp": Example(_diabetes, lambda d, p: _mlp(d, p, "regression")),
}
