"""Runs in a subprocess: TF's device layout must be set before TF starts.

`python _distributed_worker.py mirrored BALANCER[,BALANCER...] OUT_DIR`: for
each balancer, two steps of the tiny model under MirroredStrategy over 2
logical CPUs and the same steps on one device over the whole batch; saves
both models' weights to OUT_DIR/BALANCER.npz (one process for all of them:
TensorFlow starts once).

`python _distributed_worker.py multiworker BALANCER OUT.npz` (with TF_CONFIG
set): a few steps under MultiWorkerMirroredStrategy; saves the weights.

`python _distributed_worker.py gramian BALANCER -`: a step of
`compile(jacobian="gramian")` under MirroredStrategy over 2 logical CPUs;
prints the error it raises (exit 0), or exits 1 when none is raised.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

mode, balancers, out_path = sys.argv[1:4]
if mode in ("mirrored", "gramian"):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

import keras  # noqa: E402
from _tiny import LOSSES, tiny_data, tiny_network  # noqa: E402

from mtl_keras import MultiTaskModel  # noqa: E402


def train(balancer, strategy, steps, batch_size=32):
    # "name@N": the balancer with `compile(update_every=N)`; "name#engine":
    # with `compile(jacobian=engine)`.
    balancer, _, jacobian = balancer.partition("#")
    balancer, _, every = balancer.partition("@")
    with strategy.scope():
        model = tiny_network(keras.Model if balancer == "plain" else MultiTaskModel)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=LOSSES,
            loss_weights={"a": 1.0, "b": 0.5},
            **(
                {}
                if balancer == "plain"
                else {"balancer": None if balancer == "none" else balancer,
                      "update_every": int(every) if every else None,
                      "jacobian": jacobian or "loop"}
            ),
        )
    x, y = tiny_data(steps * batch_size)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    model.fit(dataset, epochs=1, verbose=0)
    return [v.numpy() for v in model.trainable_variables]


if mode == "mirrored":
    mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for balancer in balancers.split(","):
        mirrored = train(balancer, mirrored_strategy, steps=2)
        single = train(balancer, tf.distribute.get_strategy(), steps=2)
        np.savez(os.path.join(out_path, f"{balancer}.npz"), *mirrored, *single)
elif mode == "gramian":
    try:
        train(f"{balancers}#gramian",
              tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), steps=1)
    except ValueError as error:
        print(f"error: {error}")
        sys.exit(0)
    sys.exit(1)
else:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    np.savez(out_path, *train(balancers, strategy, steps=3))
