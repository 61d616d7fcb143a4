"""Runs in a subprocess (TF's device layout must be set before TF starts).

`python _masked_metrics_worker.py BALANCER OUT.json`: the tiny model with
half its labels missing, trained one epoch with a zero learning rate and
evaluated, then trained one more epoch with learning rate 0.1, under
MirroredStrategy over 2 logical CPUs and on one device; writes both runs'
metric logs and final weights.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
from _tiny import LOSSES, tiny_data, tiny_network  # noqa: E402

from mtl_keras import MISSING_LABEL  # noqa: E402

balancer, out_path = sys.argv[1:3]


def run(strategy) -> dict:
    with strategy.scope():
        model = tiny_network()
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss=LOSSES,
                      metrics={"a": ["accuracy"], "b": ["mae"]},
                      balancer=None if balancer == "none" else balancer)
    x, y = tiny_data(128)
    rng = np.random.RandomState(3)
    y["a"][rng.rand(128) < 0.5] = MISSING_LABEL
    y["b"][rng.rand(128) < 0.5] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    history = model.fit(dataset, epochs=1, verbose=0).history
    scores = model.evaluate(dataset, verbose=0, return_dict=True)
    pred = model.predict(x, verbose=0)
    model.optimizer.learning_rate.assign(0.1)
    model.fit(dataset, epochs=1, verbose=0)
    a_present, b_present = y["a"] != MISSING_LABEL, ~np.isnan(y["b"][:, 0])
    return {
        "fit": {key: history[key][0] for key in ("a_accuracy", "b_mae", "loss")},
        "evaluate": {key: scores[key] for key in ("a_accuracy", "b_mae", "loss")},
        "by_hand": {
            "a_accuracy": float(np.mean(
                pred["a"][a_present].argmax(-1) == y["a"][a_present])),
            "b_mae": float(np.mean(
                np.abs(pred["b"][b_present, 0] - y["b"][b_present, 0]))),
        },
        "weights": [v.numpy().tolist() for v in model.trainable_variables],
    }


results = {
    "mirrored": run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
    "single": run(tf.distribute.get_strategy()),
}
with open(out_path, "w") as handle:
    json.dump(results, handle)
