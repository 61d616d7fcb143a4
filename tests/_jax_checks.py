"""Backend-neutral checks run under `KERAS_BACKEND=jax` by test_jax_backend.py.

Usage: `python tests/_jax_checks.py RESULT.json [TF_FILE.keras JAX_FILE.keras
[INITIAL_WEIGHTS.npz]]`,
or `python tests/_jax_checks.py RESULT.json --data-parallel` with
`XLA_FLAGS=--xla_force_host_platform_device_count=2`.
Writes one JSON object `{check: result}`; an exception in a check is
recorded as `"error: ..."` so the pytest side names the check that failed.
"""

import json
import os
import sys
import tempfile
import textwrap
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


def check_gramian_of_rows():
    """The loop engine's `J Jᵀ` from per-task rows, by inner products (few
    tasks) and by stacks of whole values or of column chunks (many),
    against NumPy: the largest relative gap."""
    from mtl_keras.engine import jax as jax_engine

    rng = np.random.default_rng(0)
    gaps = []
    many = jax_engine.PAIRWISE_MAX_TASKS + 4
    # Inner products; whole-value stacks; column chunks (the (200, 100)
    # value, over `core.MIN_CHUNK` elements, is split).
    for num_tasks, whole_max in ((3, 2**26), (many, 2**26), (many, 0)):
        rows = [[rng.normal(size=(5, 4)), rng.normal(size=(200, 100)),
                 rng.normal(size=(7,))] for _ in range(num_tasks)]
        jacobian = np.stack([np.concatenate([g.ravel() for g in row]) for row in rows])
        got = jax_engine.gramian_of_rows(
            [[ops.convert_to_tensor(g, "float32") for g in row] for row in rows],
            whole_max)
        want = jacobian @ jacobian.T
        gap = np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want))
        gaps.append(float(gap))
    return max(gaps)


def check_loop_engine_memory(width=1024):
    """`{K: ratio}`: the temporary buffers XLA plans for UPGrad's loop-engine
    train step beyond a plain `keras.Model`'s, over |J| = K×P×4 bytes, on a
    two-layer MLP trunk, with inner products (K = 3) and column-chunk stacks
    (K above `PAIRWISE_MAX_TASKS`, J of 168 MB) forming the Gramian."""
    from mtl_keras.engine import jax as jax_engine

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "benchmarks"))
    import engine_cost

    ratios = {}
    for num_tasks in (3, jax_engine.PAIRWISE_MAX_TASKS + 4):
        temporaries = {}
        for method in ("plain", "upgrad"):
            keras.utils.set_random_seed(0)
            inputs = keras.Input((width,))
            hidden = keras.layers.Dense(width, activation="relu")(inputs)
            hidden = keras.layers.Dense(width, activation="relu")(hidden)
            model = engine_cost.many_tasks.with_heads(method, inputs, hidden,
                                                      num_tasks)
            rng = np.random.default_rng(0)
            x = rng.normal(size=(32, width)).astype("float32")
            y = {t: rng.normal(size=(32, 1)).astype("float32") for t in model.output}
            model.fit(x, y, batch_size=32, verbose=0)
            temporaries[method] = engine_cost.step_temporaries(model, (x, y))
        jacobian_bytes = num_tasks * (2 * width * width + 2 * width) * 4
        ratios[num_tasks] = (
            temporaries["upgrad"] - temporaries["plain"]) / jacobian_bytes
    return ratios


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
                  balancer=balancers.get("mgda"), update_every=3)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return [np.asarray(v).tolist() for v in model.trainable_variables]


def check_update_every():
    return train_update_every()


def check_nonfinite_step_is_skipped(balancer="pcgrad"):
    x, y = data(16)
    x[0, 0] = np.nan
    model = build()
    model.compile(keras.optimizers.SGD(0.1), loss=LOSSES, balancer=balancer)
    before = [np.array(v) for v in model.trainable_variables]
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    unchanged = all(np.array_equal(a, np.asarray(b))
                    for a, b in zip(before, model.trainable_variables))
    return [history["skipped_steps"][-1], unchanged,
            np.asarray(model.nonfinite_tasks).tolist()]


def check_nonfinite_rep_step_is_skipped():
    """The same in `mode="rep"`: the NaN reaches J over the representation."""
    return check_nonfinite_step_is_skipped("mgda_ub")


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


def check_log_keys_of_named_metrics():
    """`SparseCategoricalAccuracy(name="hit")` on both tasks: the history
    keys of MultiTaskModel and keras.Model, and the extras."""
    x, y = data()
    y = {**y, "b": np.abs(y["b"])}  # keras.Model has no missing labels
    keys = []
    for model_class in (None, keras.Model):
        model = build(model_class=model_class, regularize=False)
        model.compile("sgd", loss=LOSSES, metrics={
            "a": [keras.metrics.MeanAbsoluteError(name="hit")],
            "b": [keras.metrics.SparseCategoricalAccuracy(name="hit")]})
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                            validation_data=(x, y)).history
        keys.append(sorted(history))
    return [*keys, model_extras(build(regularize=False))]


def model_extras(model):
    model.compile("sgd", loss=LOSSES)
    return model.extra_log_names()


def check_retry_after_failed_fit():
    """A fit with a label-key typo, then one with the right labels: `[the
    first error, the second fit's final loss]`."""
    x, y = data()
    model = build(regularize=False)
    model.compile("sgd", loss=LOSSES, balancer="pcgrad")
    try:
        model.fit(x, {"a": y["a"], "bb": y["b"]}, batch_size=16, verbose=0)
        error = None
    except ValueError as failure:
        error = str(failure)

    def typo():  # read only in the step: its trace fails
        yield x[:16], {"a": y["a"][:16], "bb": y["b"][:16]}

    before = [np.array(v) for v in model.get_weights()]
    try:
        model.fit(typo(), verbose=0)
        traced_error = None
    except Exception as failure:  # noqa: BLE001 - reported to pytest
        traced_error = f"{type(failure).__name__}: {failure}"
    # Keras detached the values for the failed loop; they are back.
    unchanged = all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    history = model.fit(x, y, batch_size=16, verbose=0).history
    return [error, traced_error, unchanged, history["loss"][-1]]


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



def check_rep_mode_equals_params_mode():
    """Fixed weights in `mode="rep"` (J over the representation, one VJP
    through the trunk) == `mode="params"`: Σ w_k ∇θ L_k either way."""
    x, y = data()
    weights = []
    for mode in ("params", "rep"):
        model = build()  # with an L2 regularizer on the trunk
        model.compile(keras.optimizers.SGD(0.1), loss=LOSSES,
                      balancer=FixedWeights(mode=mode))
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    return max(float(np.max(np.abs(a - b))) for a, b in zip(*weights))


def check_rep_mode_two_representations():
    """Rep == params mode with named inputs, two shared tensors and a head
    that also reads an input (the heads model takes inputs and both)."""
    x, y = data()
    inputs = {"u": x, "v": x[:, :2] * 0.5}
    weights = []
    for mode in ("params", "rep"):
        keras.utils.set_random_seed(0)
        u, v = keras.Input((6,), name="u"), keras.Input((2,), name="v")
        first = keras.layers.Dense(8, activation="tanh")(u)
        second = keras.layers.Dense(4, activation="tanh")(
            keras.layers.Concatenate()([u, v]))
        outputs = {
            "a": keras.layers.Dense(1, name="a")(
                keras.layers.Concatenate()([first, second])),
            "b": keras.layers.Dense(3, name="b")(
                keras.layers.Concatenate()([second, v]))}
        model = mtl_keras.MultiTaskModel({"u": u, "v": v}, outputs,
                                         shared=[first, second])
        model.compile(keras.optimizers.SGD(0.1), loss=LOSSES,
                      balancer=FixedWeights(mode=mode))
        model.fit(inputs, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    return max(float(np.max(np.abs(a - b))) for a, b in zip(*weights))


def train_mgda_ub(initial_weights):
    """MGDA-UB (SGD, 2 epochs of 2 batches) from given weights: the
    trainable weights after, and the last epoch's task weights."""
    x, y = data()
    model = build()
    model.set_weights(initial_weights)
    # The "b" head outputs logits: with `from_logits=True` the loss is the
    # same function on both backends (as probabilities it is not).
    losses = {"a": "mse",
              "b": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
    model.compile(keras.optimizers.SGD(0.1), loss=losses, balancer="mgda_ub")
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False,
                        verbose=0).history
    return ([np.asarray(v).tolist() for v in model.trainable_variables],
            [history["a_weight"][-1], history["b_weight"][-1]])


def check_rep_mode_matches_tf(initial_file):
    """`train_mgda_ub` on JAX, from the weights the TF side saved."""
    with np.load(initial_file) as saved:
        initial = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    return train_mgda_ub(initial)


def check_rep_mode_with_batch_norm():
    """MGDA-UB (`mode="rep"`) on a trunk with BatchNormalization, one step:
    `[max |Δ| of the moving statistics to those of the step's batch by
    hand, the trunk's kernel moved]` (the trunk's new statistics leave the
    trunk's VJP as an output, not through a closure)."""
    x, y = data()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), name="x")
    hidden = keras.layers.Dense(8, name="trunk")(inputs)
    normalized = keras.layers.BatchNormalization(name="norm")(hidden)
    features = keras.layers.Activation("tanh")(normalized)
    outputs = {"a": keras.layers.Dense(1, name="a")(features),
               "b": keras.layers.Dense(3, name="b")(features)}
    model = mtl_keras.MultiTaskModel(inputs, outputs, shared=features)
    model.compile(keras.optimizers.SGD(0.1), loss=LOSSES, balancer="mgda_ub")
    kernel, bias = (np.asarray(v) for v in model.get_layer("trunk").weights)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    norm = model.get_layer("norm")
    batch = x @ kernel + bias
    want_mean = 0.01 * batch.mean(axis=0)
    want_variance = 0.99 + 0.01 * batch.var(axis=0)
    gap = max(float(np.max(np.abs(np.asarray(norm.moving_mean) - want_mean))),
              float(np.max(np.abs(np.asarray(norm.moving_variance)
                                  - want_variance))))
    moved = not np.allclose(np.asarray(model.get_layer("trunk").kernel), kernel)
    return [gap, moved]


def _custom_loop_example(steps):
    """The example of `engine.jax.balanced_gradients`, run for `steps`."""
    from mtl_keras.engine import jax as jax_engine

    source = jax_engine.balanced_gradients.__doc__
    code = source.split("```python")[1].split("```")[0]
    code = code.replace("range(20)", f"range({steps})")
    namespace = {}
    exec(compile(textwrap.dedent(code), "balanced_gradients example", "exec"),
         namespace)
    return namespace


def check_custom_loop_over_representation():
    """`balanced_gradients(..., representation=fn)` on JAX: `[loss before,
    loss after the docstring's 20 steps, max |Δ| to the update by hand,
    the error without representation=]`."""
    import jax

    start = _custom_loop_example(0)
    trunk, task_losses = start["trunk"], start["task_losses"]
    shared, heads = start["shared"], start["heads"]
    end = _custom_loop_example(20)
    result = mtl_keras.engine.balanced_gradients(
        task_losses, shared, heads, "mgda_ub", representation=trunk)
    # By hand: J over the representation, MGDA's weights from its Gramian,
    # the update wᵀJ pulled back through the trunk, Σ w_k ∇ L_k on the heads.
    features = trunk(shared)
    losses = task_losses(features, heads)
    jacobian = jax.jacrev(lambda f: task_losses(f, heads))(features).reshape(2, -1)
    weights = balancers.get("mgda").balance(losses, jacobian @ jacobian.T)
    _, trunk_vjp = jax.vjp(trunk, shared)
    (shared_grads,) = trunk_vjp((weights @ jacobian).reshape(features.shape))
    head_grads = jax.grad(lambda h: weights @ task_losses(features, h))(heads)
    gap = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(result.grads, list(shared_grads) + list(head_grads)))
    gap = max(gap, float(np.max(np.abs(np.asarray(result.weights - weights)))))
    try:
        mtl_keras.engine.balanced_gradients(
            lambda s, h: task_losses(trunk(s), h), shared, heads, "mgda_ub")
        error = None
    except ValueError as raised:
        error = str(raised)
    return [_summed_loss(start), _summed_loss(end), gap, error]


def _summed_loss(namespace):
    features = namespace["trunk"](namespace["shared"])
    return float(np.sum(np.asarray(namespace["task_losses"](
        features, namespace["heads"]))))


def check_saved_model_export():
    """`mtl_keras.export.saved_model` on JAX (Keras' ExportArchive through
    jax2tf): `[serving keys, max |served - predict|, class ids agree]`."""
    import tensorflow as tf

    x, y = data()
    model = build()
    model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES, balancer="upgrad")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = mtl_keras.export.saved_model(
        model, os.path.join(tempfile.mkdtemp(), "export"),
        postprocess={"b": "classify"})
    serve = tf.saved_model.load(path).signatures["serving_default"]
    served = {k: v.numpy() for k, v in serve(x=tf.constant(x)).items()}
    predicted = model.predict(x, verbose=0)
    gap = max(float(np.max(np.abs(served[t] - np.asarray(predicted[t]))))
              for t in ("a", "b"))
    same_ids = bool(np.array_equal(served["b_class_id"],
                                   np.argmax(np.asarray(predicted["b"]), axis=-1)))
    return [sorted(served), gap, same_ids]


def check_task_board():
    """TaskBoard on JAX: `[train tags, layout categories, validation tags]`."""
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    x, y = data()
    log_dir = tempfile.mkdtemp()
    model = build()
    model.compile(keras.optimizers.Adam(1e-2), loss=LOSSES, balancer="pcgrad")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_data=(x, y),
              callbacks=[mtl_keras.callbacks.TaskBoard(log_dir)])
    runs = {}
    for run in ("train", "validation"):
        events = EventAccumulator(os.path.join(log_dir, run),
                                  size_guidance={"tensors": 0})
        events.Reload()
        runs[run] = events
    layout = layout_pb2.Layout()
    (config,) = runs["train"].Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout.ParseFromString(config.tensor_proto.string_val[0])
    steps = [e.step for e in runs["train"].Tensors("epoch_a_loss")]
    return [sorted(runs["train"].Tags()["tensors"]),
            [c.title for c in layout.category],
            sorted(runs["validation"].Tags()["tensors"]), steps]


def check_tfds_builder_trains():
    """A TFDS builder's dataset (tf.data) feeds `fit` on JAX: `[first loss,
    last loss]` of a small model on the `Shapes` builder's examples."""
    import tensorflow_datasets as tfds  # noqa: F401 - the builder needs it

    from mtl_keras.datasets import shapes

    config = shapes.ShapesConfig(name="tiny", image_size=16,
                                 split_sizes={"train": 64, "test": 8}, seed=1)
    builder = shapes.Shapes(data_dir=tempfile.mkdtemp(), config=config)
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="train", as_supervised=True).map(
        lambda image, labels: (image, {"cls": labels["cls"],
                                       "count": labels["count"]})).batch(32)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.Dense(16, activation="relu")(
        keras.layers.Flatten()(inputs))
    model = mtl_keras.MultiTaskModel(inputs, {
        "cls": keras.layers.Dense(shapes.NUM_CLASSES, name="cls")(features),
        "count": keras.layers.Dense(1, name="count")(features)}, shared=features)
    model.compile(keras.optimizers.Adam(1e-2), balancer="mgda_ub", loss={
        "cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "count": "mse"})
    history = model.fit(dataset, epochs=5, verbose=0).history
    return [history["loss"][0], history["loss"][-1]]


def check_famo_post_step():
    """FAMO's second forward pass, on a trunk with batch norm and dropout held
    still by SGD at rate 0: `[max |FAMO logit|, max |Δ| between the
    non-trainable weights and those of the same fit with equal weights]`.
    Both are 0 when the pass after the step sees the step's own training-mode
    forward (same dropout masks) and changes no state."""
    x, y = data()

    def fit(balancer):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(8, activation="relu")(inputs)
        hidden = keras.layers.BatchNormalization()(hidden)
        features = keras.layers.Dropout(0.5)(hidden)
        model = mtl_keras.MultiTaskModel(inputs, {
            "a": keras.layers.Dense(1, name="a")(features),
            "b": keras.layers.Dense(3, name="b")(features)}, shared=features)
        model.compile(keras.optimizers.SGD(0.0), loss=LOSSES, balancer=balancer)
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        return model

    famo, equal = fit("famo"), fit("ew")
    batch_norm = zip(famo.layers[2].non_trainable_variables,
                     equal.layers[2].non_trainable_variables)
    return [float(np.max(np.abs(np.asarray(famo.balancer.logits)))),
            max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in batch_norm)]


def data_parallel_gap():
    """Max |Δ| between trainable weights trained on 2 devices
    (`keras.distribution.DataParallel`) and on one, per balancer."""
    import jax

    gaps = {"devices": len(jax.devices())}
    for name in ("upgrad", "pcgrad", "uw", "mgda_ub"):
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
        wanted = {"check_continue_tf_file": sys.argv[2:4],
                  "check_rep_mode_matches_tf": sys.argv[4:5]}
        args = wanted.get(name, [])
        if name in wanted and not args:
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
