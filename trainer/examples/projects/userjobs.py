"""A `module:` job: `entrypoint: module:userjobs:train_breast_cancer`. The trainer calls
FUNCTION(params, tensorboard_dir) inside the job's active MLflow run."""

import keras
import mlflow
from sklearn.datasets import load_breast_cancer


def train_breast_cancer(params: dict, tensorboard_dir: str) -> None:
    data = load_breast_cancer()
    x, y = data.data.astype("float32"), data.target.astype("float32")
    normalize = keras.layers.Normalization()
    normalize.adapt(x)
    model = keras.Sequential([keras.Input(shape=x.shape[1:]), normalize,
                              keras.layers.Dense(int(params.get("units", 8)), activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=int(params.get("epochs", 3)), validation_split=0.2, verbose=2,
              callbacks=[mlflow.keras.MlflowCallback(),
                         keras.callbacks.TensorBoard(log_dir=tensorboard_dir)])
