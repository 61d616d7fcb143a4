"""Runs in a subprocess: TF's device layout must be set before TF starts.

`python _mmoe_distributed_worker.py BALANCER OUT.npz`: two steps of a tiny
MMoE model under MirroredStrategy over 2 logical CPUs, and the same steps on
one device over the whole batches; saves both models' weights.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

balancer, out_path = sys.argv[1:3]
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
from _tiny import LOSSES, tiny_data  # noqa: E402

from mtl_keras import MultiTaskModel  # noqa: E402
from mtl_keras.architectures import MMoE  # noqa: E402


def train(strategy, steps=2, batch_size=32):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8,), name="x")
        towers = MMoE(2, num_experts=3, expert_units=(8,), gate="dselect_k")(inputs)
        outputs = {
            "a": keras.layers.Dense(3, activation="softmax", name="a")(towers[0]),
            "b": keras.layers.Dense(1, name="b")(towers[1]),
        }
        model = MultiTaskModel(inputs, outputs)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSSES,
                      loss_weights={"a": 1.0, "b": 0.5},
                      balancer=None if balancer == "none" else balancer)
    x, y = tiny_data(steps * batch_size)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    model.fit(dataset, epochs=1, verbose=0)
    return [v.numpy() for v in model.trainable_variables]


mirrored = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
single = train(tf.distribute.get_strategy())
np.savez(out_path, *mirrored, *single)
