"""A small Keras classifier on scikit-learn's bundled iris data, as a team member would write
it: MLflow's Keras callback for metrics, Keras' TensorBoard callback for curves. Run by the
trainer, it logs into the job's run (MLFLOW_RUN_ID) and writes curves to MLSTACK_TB_LOGDIR."""

import argparse
import os

import keras
import mlflow
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, required=True)
parser.add_argument("--hidden-units", type=int, required=True)
args = parser.parse_args()

data = load_iris()
x_train, x_test, y_train, y_test = train_test_split(
    data.data.astype("float32"), data.target, test_size=0.25, random_state=0)
normalize = keras.layers.Normalization()
normalize.adapt(x_train)
model = keras.Sequential([keras.Input(shape=(4,)), normalize,
                          keras.layers.Dense(args.hidden_units, activation="relu"),
                          keras.layers.Dense(3, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

with mlflow.start_run():
    callbacks = [mlflow.keras.MlflowCallback()]
    if "MLSTACK_TB_LOGDIR" in os.environ:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=os.environ["MLSTACK_TB_LOGDIR"]))
    model.fit(x_train, y_train, epochs=args.epochs, validation_split=0.2, verbose=2,
              callbacks=callbacks)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    mlflow.log_metric("test_accuracy", accuracy)
