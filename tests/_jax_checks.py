"""Backend-neutral checks run under `KERAS_BACKEND=jax` by test_jax_backend.py.

Usage: `python tests/_jax_checks.py RESULT.json [TF_FILE.keras JAX_FILE.keras]`,
or `python tests/_jax_checks.py RESULT.json --data-parallel` with
`XLA_FLAGS=--xla_force_host_platform_device_count=2`.
Writes one JSON object `{check: result}`; an exception in a check is
recorded as `"error: ..."` so the pytest side names the check that failed.
"""

import json
import os
import sys
import traceback

if __name__ == "__main__":  # imported by test_jax_backend.py: leave its env alone
    os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import mtl_keras  # noqa: E402
from mtl_keras import balancers  # noqa: E402

LOSSES = {"a": "mse", "b": "sparse_categorical_crossentropy"}


def data(rows=32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 6)).astype("float32")
    y = {"a": 2 * x[:, :1], "b": (x[:, 1] > 0).astype("int32")}
    y["b"][:3] = -1  # missing labels
    return x, y


def build(seed=0, model_class=None, regularize=True):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,), name="x")
    regularizer = keras.regularizers.l2(1e-3) if regularize else None
    features = keras.layers.Dense(8, activation="tanh", name="trunk",
                                  kernel_regularizer=regularizer)(inputs)
    outputs = {"a": keras.layers.Dense(1, name="a")(features),
               "b": keras.layers.Dense(3, name="b")(features)}
    if model_class is keras.Model:
        return keras.Model(inputs, outputs)
    return mtl_keras.MultiTaskModel(inputs, outputs, shared=features)


class FixedWeights(balancers.GramianBalancer):
    def compute_weights(self, task_losses, gramian):
        return ops.convert_to_tensor([0.3, 1.7], "float32")


def check_backend():
    return keras.backend.backend()


def check_fixed_weights_equal_loss_weights():
    """Params-mode engine with fixed weights == keras.Model(loss_weights)."""
    x, y = data()
    y["b"] = np.abs(y["b"])  # plain Keras has no missing-label masking
    model = build()
    model.compile(keras.optimizers.SGD(0.1), loss=LOSSES, balancer=FixedWeights())
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    plain = build(model_class=keras.Model)
    plain.compile(keras.optimizers.SGD(0.1), loss=LOSSES,
                  loss_weights={"a": 0.3, "b": 1.7})
    plain.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(model.get_weights(), plain.get_weights()))


def check_every_balancer_trains():
    """`{name: (first loss, last loss, log keys)}` for every registered name."""
    x, y = data()
    results = {}
    for name in balancers.available():
        model = build()
        model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES, balancer=name)
        try:
            history = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history
        except NotImplementedError as error:
            results[name] = f"not implemented: {error}"
            continue
        results[name] = [history["a_loss"][0] + history["b_loss"][0],
                         history["a_loss"][-1] + history["b_loss"][-1],
                         sorted(history)]
    return results


def check_jacobian_methods_agree():
    """compile(jacobian="pfor") (jax.vmap) == "loop" (K VJPs) on JAX."""
    x, y = data()
    weights = []
    for method in ("loop", "pfor"):
        model = build()
        model.compile(keras.optimizers.SGD(0.1), loss=LOSSES, balancer="upgrad",
                      jacobian=method)
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    return max(float(np.max(np.abs(a - b))) for a, b in zip(*weights))


def train_update_every(steps=5):
    """MGDA with `update_every=3` for `steps` full batches, on any backend:
    the trained weights (refreshes at steps 0 and 3, cached in between)."""
    x, y = data(16 * steps)
    model = build()
    rng = np.random.default_rng(3)  # the same start on both backends
    for variable in model.trainable_variables:
        variable.assign(0.5 * rng.normal(size=variable.shape).astype("float32"))
    # From logits: TF and JAX treat logits given as probabilities differently.
    losses = {"a": "mse",
              "b": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
    model.compile(keras.optimizers.SGD(0.1), loss=losses,
                  balancer=balancers.get("mgda", update_every=3))
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return [np.asarray(v).tolist() for v in model.trainable_variables]


def check_update_every():
    return train_update_every()


def check_nonfinite_step_is_skipped():
    x, y = data(16)
    x[0, 0] = np.nan
    model = build()
    model.compile(keras.optimizers.SGD(0.1), loss=LOSSES, balancer="pcgrad")
    before = [np.array(v) for v in model.trainable_variables]
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    unchanged = all(np.array_equal(a, np.asarray(b))
                    for a, b in zip(before, model.trainable_variables))
    return [history["skipped_steps"][-1], unchanged,
            np.asarray(model.nonfinite_tasks).tolist()]


def check_evaluation_and_masked_metrics():
    """Validation logs, masked metrics, and evaluation leaving the balancer
    state alone: `[log keys, val_loss, Σ w·L by hand, state unchanged]`."""
    x, y = data()
    model = build(regularize=False)
    model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES, balancer="gradvac",
                  metrics={"b": ["accuracy"]}, loss_weights={"a": 0.5, "b": 2.0})
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                        validation_data=(x, y)).history
    state = [np.array(v) for v in model.balancer.non_trainable_variables]
    result = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    unchanged = all(np.array_equal(a, np.asarray(b)) for a, b in
                    zip(state, model.balancer.non_trainable_variables))
    losses = model.compute_task_losses(y, model(x))
    by_hand = float(0.5 * losses[0] + 2.0 * losses[1])
    return [sorted(history), result["loss"], by_hand, unchanged]


def check_dynamic_weight_average():
    """DWA (an epoch-level callback) on JAX: `[a_weight, b_weight]` per epoch."""
    x, y = data()
    model = build()
    model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES)
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[
        mtl_keras.callbacks.DynamicWeightAverage()]).history
    return [history["a_weight"], history["b_weight"]]


def check_continue_tf_file(tf_file, jax_file):
    """Loads a `.keras` file trained on TF, reports its balancer state,
    trains one more epoch on JAX and saves it for TF to continue."""
    model = keras.saving.load_model(tf_file)
    state = [np.asarray(v).tolist() for v in model.balancer.non_trainable_variables]
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    model.save(jax_file)
    return {"state": state,
            "iterations": int(model.optimizer.iterations.numpy()),
            "weights_after": [np.asarray(w).tolist() for w in model.get_weights()]}


def data_parallel_gap():
    """Max |Δ| between trainable weights trained on 2 devices
    (`keras.distribution.DataParallel`) and on one, per balancer."""
    import jax

    gaps = {"devices": len(jax.devices())}
    for name in ("upgrad", "pcgrad", "uw"):
        weights = []
        for distribution in (None, keras.distribution.DataParallel(
                devices=jax.devices())):
            keras.distribution.set_distribution(distribution)
            x, y = data()
            model = build()
            model.compile(keras.optimizers.SGD(0.1), loss=LOSSES, balancer=name)
            model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
            weights.append([np.asarray(v) for v in model.trainable_variables])
        keras.distribution.set_distribution(None)
        gaps[name] = max(float(np.max(np.abs(a - b))) for a, b in zip(*weights))
    return gaps


def main():
    out = sys.argv[1]
    if sys.argv[2:] == ["--data-parallel"]:
        with open(out, "w") as handle:
            json.dump(data_parallel_gap(), handle)
        return
    checks = {name: fn for name, fn in globals().items() if name.startswith("check_")}
    results = {}
    for name, function in checks.items():
        args = sys.argv[2:4] if name == "check_continue_tf_file" else []
        if name == "check_continue_tf_file" and len(args) < 2:
            continue
        try:
            results[name] = function(*args)
        except Exception as error:  # noqa: BLE001 - reported to pytest
            results[name] = f"error: {type(error).__name__}: {error}\n" + (
                traceback.format_exc()[-2000:])
    with open(out, "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main()
