"""`MultiTaskModel`: a functional Keras model with named task heads."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from mtl_keras import _compat, engine, sharing
from mtl_keras import balancers as balancers_lib
from mtl_keras._typing import Tensor
from mtl_keras.balancers.base import GradientBalancer, LossBalancer
from mtl_keras.engine import amortise
from mtl_keras.engine.backend import check_jacobian_method
from mtl_keras.masked_metric import MaskedMetric
from mtl_keras.nonfinite import NonFiniteTasks
from mtl_keras.progress import TaskProgbarLogger
from mtl_keras.task_losses import (
    check_class_ids,
    check_label_dtype,
    check_label_shape,
    check_sample_weight_shape,
    label_errors,
    masked_task_loss,
    to_loss,
)
from mtl_keras.task_weight_history import TaskWeightHistory
from mtl_keras.task_weights import TaskWeights
from mtl_keras.vector_mean import VectorMean

#: The output key under which `get_config` records the shared tensor, so that
#: Keras' own functional deserialisation finds it again.
_SHARED_KEY = "__mtl_keras_shared__"

#: `compile(diagnostics=...)` values, and the largest task count for which
#: "auto" logs the pairwise gradient cosines.
DIAGNOSTICS = ("auto", "all", "norms", "none")
MAX_TASKS_FOR_COSINES = 8


@keras.saving.register_keras_serializable(package="mtl_keras")
class MultiTaskModel(_compat.DistributedBuildFix, keras.Model):
    """A functional `keras.Model` whose outputs are named tasks.

    Build it like a functional model, with a dict of task outputs and the
    shared representation tensor; compile it like a multi-output model, plus
    an optional `balancer`. Without a balancer it trains exactly like
    `keras.Model` with the same `loss_weights`, except that it also handles
    missing labels (see `mtl_keras.task_losses`) and logs `<task>_loss`
    (unweighted) and `<task>_weight` (the weight applied to it) every epoch.

    `loss` and `val_loss` always mean what they mean in Keras: the sum of
    the task losses times their task weights, plus regularization losses,
    the same formula in training and evaluation whatever the balancer. A
    balancer's own objective, where it has one, is logged in training as
    `balanced_loss`. Evaluation never calls the balancer, so it changes no
    balancer state. Missing labels are left out of the losses and of every
    compiled metric (see `mtl_keras.MaskedMetric`).

    The model owns the task weights (`model.task_weights`, initialised from
    `loss_weights`): static weights, epoch-level callbacks and balancers
    compose, since the task weights scale each loss before a balancer sees
    it. Gradient balancers also log `grad_norm/<task>` and
    `grad_cos/<a>/<b>`, read from the Gramian of the task gradients (see
    `compile(diagnostics=...)`).

    The log keys are those of a `keras.Model` with the same outputs, losses
    and metrics (`loss`, `<task>_loss`, `<task>_<metric>` and their `val_`
    forms), plus the training-only keys listed by `extra_log_names()`.
    The progress bar of `fit` leaves those extras out unless
    `compile(progress_diagnostics=True)`, and shows `skipped_steps` only
    once a step was skipped (see `mtl_keras.progress.TaskProgbarLogger`).

    Args:
        inputs: The model inputs, as for `keras.Model`.
        outputs: A dict `{task_name: output_tensor}`.
        name: The model name.
        shared: Optional, keyword only (default None). The shared
            representation tensor, or a list of tensors (several shared
            representations, e.g. the outputs of several shared branches).
            Their upstream variables are the shared parameters whose
            per-task gradients a gradient balancer weighs, and `mode="rep"`
            balancers differentiate with respect to them. When omitted, the
            shared parameters are the variables that reach more than one
            task output (found inside layers, see `mtl_keras.sharing`).
        **kwargs: Passed to `keras.Model` (e.g. `trainable`).

    Example:

    ```python
    inputs = keras.Input((32, 32, 3), name="image")
    features = trunk(inputs)
    model = mtl_keras.MultiTaskModel(
        inputs, {"cls": cls_head(features), "seg": seg_head(features)},
        shared=features)
    model.compile(optimizer="adam",
                  loss={"cls": "sparse_categorical_crossentropy",
                        "seg": "sparse_categorical_crossentropy"},
                  loss_weights={"cls": 1.0, "seg": 0.5},
                  balancer="pcgrad")
    model.fit(train_ds, epochs=5)
    ```
    """

    def __init__(self, inputs: Any, outputs: Any, name: str | None = None, *,
                 shared: Any = None, **kwargs: Any) -> None:
        # `shared` is keyword-only: the positional arguments stay those of a
        # functional model, which Keras needs to save and revive the graph.
        if not isinstance(outputs, dict) or not outputs:
            raise ValueError(
                "MultiTaskModel needs `outputs` as a dict {task_name: tensor}, "
                f"got {type(outputs).__name__}."
            )
        revived = sorted((key for key in outputs if key.startswith(_SHARED_KEY)),
                         key=lambda key: int(key[len(_SHARED_KEY):] or -1))
        if revived:  # revived by `from_config`
            outputs = dict(outputs)
            shared = [outputs.pop(key) for key in revived]
            if revived == [_SHARED_KEY]:
                shared = shared[0]
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        # Keras flattens dict outputs in sorted key order; so do we.
        self.task_names = sorted(outputs)
        # float32 whatever the global dtype policy: under mixed precision
        # the task losses, and their weighting, stay in float32.
        self.task_weights = TaskWeights(self.task_names, dtype="float32")
        self.task_weight_history = TaskWeightHistory(self.task_names, dtype="float32")
        self.nonfinite_flags = NonFiniteTasks(self.task_names, dtype="float32")
        object.__setattr__(self.task_weights, "legacy_variables", [
            *self.task_weight_history.non_trainable_variables,
            self.nonfinite_flags.values])
        self.balancer = None
        self.update_schedule = None
        if isinstance(shared, tuple):
            shared = list(shared)
        self._shared_tensor = shared
        # Untracked helpers: views over the same layers, not saved twice.
        object.__setattr__(self, "_shared_variable_list", None)
        object.__setattr__(self, "_rep_model", None)
        self._jacobian_method = "loop"

    # Whether a subclass computes its task losses itself (then it reads the
    # labels its own way, and `_check_data` leaves them to it).
    _custom_task_losses = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = {"compute_task_losses", "compute_task_loss_list"} & set(vars(cls))
        if own:
            cls._custom_task_losses = True
        if own == {"compute_task_losses"}:
            # The subclass customises the (K,) tensor: the engine's hook
            # (`compute_task_loss_list`) reads its losses from it.
            cls.compute_task_loss_list = _loss_list_from_tensor

    # ------------------------------------------------------------------ setup

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def shared_variables(self) -> list:
        """The trainable variables shared by the tasks."""
        if self._shared_variable_list is None:
            object.__setattr__(self, "_shared_variable_list", self._find_shared())
        return self._shared_variable_list

    def _find_shared(self) -> list:
        if self._shared_tensor is not None:
            trunk = keras.Model(self.inputs, self._shared_tensor)
            return list(trunk.trainable_variables)
        return sharing.shared_variables(self)

    @property
    def shared_tensors(self) -> list | None:
        """The shared representation tensor(s) given as `shared=`, or `None`."""
        return self._shared_tensor

    @property
    def jacobian_method(self) -> str:
        """How a gradient balancer gets the per-task gradients
        (`compile(jacobian=...)`)."""
        return self._jacobian_method

    @property
    def head_variables(self) -> list:
        """The trainable variables that are not shared (heads, balancer)."""
        shared_ids = {id(v) for v in self.shared_variables}
        return [v for v in self.trainable_variables if id(v) not in shared_ids]

    def representation_model(self) -> keras.Model:
        """A model over the same layers: `x -> [{task: output}, shared]`,
        for `mode="rep"` balancers (J over the shared representation)."""
        if self._shared_tensor is None:
            raise ValueError(
                f"{type(self.balancer).__name__}(mode='rep') differentiates "
                "with respect to the shared representation: build the "
                "MultiTaskModel with `shared=<the trunk's output tensor>`."
            )
        if self._rep_model is None:
            outputs = {t: self.outputs[i] for i, t in enumerate(self.task_names)}
            model = keras.Model(self.inputs, [outputs, self._shared_tensor])
            object.__setattr__(self, "_rep_model", model)
        return self._rep_model

    def compile(
        self,
        optimizer: str | keras.optimizers.Optimizer = "rmsprop",
        loss: Any = None,
        loss_weights: Mapping[str, float] | None = None,
        metrics: Any = None,
        balancer: balancers_lib.Balancer | str | dict | None = None,
        jacobian: str = "loop",
        diagnostics: str = "auto",
        update_every: int | None = None,
        progress_diagnostics: bool = False,
        **kwargs: Any,
    ) -> None:
        """Configures the model for training.

        Args:
            optimizer: As for `keras.Model.compile`.
            loss: A dict `{task: loss}` (string, `keras.losses.Loss` or
                function), or one loss for every task.
            loss_weights: A dict `{task: float}` of static task weights
                (default 1 each). They initialise `model.task_weights`.
            metrics: A dict `{task: [metrics]}` or a list with one entry
                (a list of metrics, or `None`) per task in `task_names`
                order, as for `keras.Model`; or one flat list of metrics
                for every task. Strings, functions and `keras.metrics.Metric`
                objects are logged under the names `keras.Model` gives them
                (`<task>_<name>`); a metric object given to several tasks
                is cloned for each, so no task's value holds another's.
            balancer: A balancer instance, a method name with a balancer
                (`mtl_keras.methods.names()`; `mtl-keras methods` lists
                them), a config dict, or `None`.
            jacobian: How a gradient balancer gets the per-task gradients:
                `"loop"` (K `GradientTape.gradient` calls on a persistent
                tape, the default, faster in our measurements) or `"pfor"`
                (the backward pass vectorised over the tasks: pfor on
                TensorFlow, `jax.vmap` on JAX; works with loss scaling)
                or `"gramian"` (TensorFlow, one replica, balancers whose
                weights depend only on the Gramian: `J Jᵀ` accumulated
                from the shared layers' inputs and per-task output
                gradients, J never held, then one backward pass of
                `Σ w_k L_k`; see docs/guides/gramian_engine.md).
            diagnostics: What a gradient balancer logs from the Gramian:
                `"all"` (`grad_norm/<task>` and the pairwise cosines
                `grad_cos/<a>/<b>`), `"norms"` (the norms only), `"none"`,
                or `"auto"` (the default: "all" up to
                `MAX_TASKS_FOR_COSINES` tasks, "norms" above).
            update_every: Recompute a gradient balancer's weights every this
                many steps only (default 1: every step); in between, one
                backward pass of `Σ w_k L_k` with the last weights, about
                the cost of a plain `keras.Model` step. The balancer runs
                inside `mtl_keras.engine.UpdateEvery`, kept as
                `model.update_schedule` (its cache saves with the model).
            progress_diagnostics: Whether `fit`'s progress bar also shows
                the extra keys of `extra_log_names()` (task weights,
                `balanced_loss`, gradient diagnostics). They always reach
                the history and TensorBoard.
            **kwargs: Passed to `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, `weighted_metrics`, ...).
        """
        self.task_losses = self._normalise_losses(loss)
        self.task_weights.assign(self._normalise_loss_weights(loss_weights))
        weighted_metrics = kwargs.pop("weighted_metrics", None)
        check_jacobian_method(jacobian)
        if diagnostics not in DIAGNOSTICS:
            raise ValueError(
                f"diagnostics must be one of {DIAGNOSTICS}, got {diagnostics!r}.")
        self._jacobian_method = jacobian
        self._diagnostics = diagnostics
        self._progress_diagnostics = bool(progress_diagnostics)
        self.balancer = balancers_lib.get(balancer)
        if self.balancer is not None and not isinstance(
            self.balancer, balancers_lib.Balancer
        ):
            raise ValueError(
                f"{balancer!r} is not a balancer; give a method name "
                "(`mtl_keras.methods.names()`), a Balancer or its config.")
        check_jacobian_method(jacobian, self.balancer)
        self.update_schedule = amortise.wrap(self.balancer, update_every)
        if self.balancer is not None:
            self.balancer.build_for_tasks(self.task_names)
            self._check_balancer()
        if self.update_schedule is not None:
            self.update_schedule.build_for_tasks(self.task_names)
        self._create_trackers()
        seen = set()
        super().compile(
            optimizer=optimizer, loss=None,
            metrics=self._masked_metrics("metrics", metrics, seen),
            weighted_metrics=self._masked_metrics(
                "weighted_metrics", weighted_metrics, seen),
            **kwargs)
        # Untracked: as an attribute Keras would track the user's metric
        # objects in it as metrics of the model, logged under their bare
        # names (`accuracy`, holding the last task's value).
        object.__setattr__(self, "_mtl_compile_args", {
            "loss": {t: keras.saving.serialize_keras_object(fn)
                     for t, fn in self.task_losses.items()},
            "loss_weights": self.task_weights.as_dict(),
            "balancer": (keras.saving.serialize_keras_object(self.balancer)
                         if self.balancer is not None else None),
            "jacobian": jacobian,
            "diagnostics": diagnostics,
            "update_every": (1 if self.update_schedule is None
                             else self.update_schedule.every),
            "progress_diagnostics": self._progress_diagnostics,
            "metrics": metrics,
            "weighted_metrics": weighted_metrics,
        })

    def _masked_metrics(self, what: str, metrics, seen: set):
        """`{task: [MaskedMetric, ...]}` for compile's `metrics` or
        `weighted_metrics`: a dict by task, a list with one entry per task
        (each a list or `None`), or one flat list for every task. `seen`
        holds the ids of the metric objects already compiled."""
        if metrics is None:
            return None
        if _per_output_list(metrics, self.num_tasks):
            metrics = dict(zip(self.task_names, metrics))
        elif not isinstance(metrics, dict):
            metrics = {t: metrics for t in self.task_names}
        self._check_task_keys(what, metrics)
        masked = {}
        for task, task_metrics in metrics.items():
            if task_metrics is None:
                continue
            masked[task] = []
            for metric in _as_list(task_metrics):
                if isinstance(metric, keras.metrics.Metric):
                    if id(metric) in seen:  # shared: one state per task
                        metric = _clone_metric(metric)
                    seen.add(id(metric))
                masked[task].append(MaskedMetric(metric))
        return masked

    def _check_task_keys(self, what: str, value) -> None:
        if not isinstance(value, dict):
            return
        # Sorted by `str`: a wrong key need not be a string.
        missing = sorted(set(self.task_names) - set(value))
        unknown = sorted(set(value) - set(self.task_names), key=str)
        if unknown or (missing and what == "loss"):
            raise ValueError(
                f"`{what}` names tasks {sorted(value, key=str)} but the model's "
                f"outputs are {self.task_names}: unknown {unknown}, missing "
                f"{missing}. Use the output names as the keys of `{what}`."
            )

    def _normalise_losses(self, loss) -> dict:
        if loss is None:
            raise ValueError(
                "MultiTaskModel.compile needs `loss`: a dict {task: loss} for "
                f"the tasks {self.task_names}, or one loss for all of them."
            )
        if isinstance(loss, dict):
            self._check_task_keys("loss", loss)
            return {t: to_loss(loss[t], t) for t in self.task_names}
        if isinstance(loss, (list, tuple)):
            raise ValueError(
                "Give `loss` as a dict {task: loss} (tasks: "
                f"{self.task_names}), not a {type(loss).__name__}."
            )
        return {t: to_loss(loss, t) for t in self.task_names}

    def _normalise_loss_weights(self, loss_weights) -> list[float]:
        if loss_weights is None:
            return [1.0] * self.num_tasks
        if not isinstance(loss_weights, dict):
            raise ValueError(
                "Give `loss_weights` as a dict {task: weight} (tasks: "
                f"{self.task_names}), not a {type(loss_weights).__name__}."
            )
        self._check_task_keys("loss_weights", loss_weights)
        return [loss_weights.get(t, 1.0) for t in self.task_names]

    def _check_balancer(self) -> None:
        if isinstance(self.balancer, GradientBalancer):
            if self.balancer.mode == "rep":
                self.representation_model()
            elif not self.shared_variables:
                raise ValueError(
                    f"{type(self.balancer).__name__} weighs the task gradients "
                    "over the shared variables, but no trainable variable "
                    "feeds more than one task. Pass `shared=` to "
                    "MultiTaskModel, or use a loss balancer."
                )
            if self.balancer.mode == "params":
                size = sum(int(np.prod(v.shape)) for v in self.shared_variables)
                self.balancer.build_for_jacobian(size)

    def _create_trackers(self) -> None:
        mean = keras.metrics.Mean
        self._total_loss_tracker = mean(name="loss")
        self._balanced_loss_tracker = (
            mean(name="balanced_loss") if self.balancer is not None else None)
        # One vector metric per group (not K scalar ones): a few ops per
        # step whatever the number of tasks, with the same log keys.
        self._task_loss_trackers = VectorMean(
            [f"{t}_loss" for t in self.task_names], name="task_losses")
        self._task_weight_trackers = VectorMean(
            [f"{t}_weight" for t in self.task_names], name="task_weights")
        self._skipped_steps = keras.metrics.Sum(name="skipped_steps")
        self._diagnostic_trackers = []
        if isinstance(self.balancer, GradientBalancer) and self._diagnostics != "none":
            names = engine.diagnostic_names(self.task_names, self._cosines())
            self._diagnostic_trackers = [
                VectorMean(names, name="gradient_diagnostics")]

    def extra_log_names(self, validation: bool = False) -> list[str]:
        """The log keys this model adds to those of a `keras.Model` with
        the same outputs, losses and metrics.

        In training (after `compile`): `<task>_weight` for every task (the
        epoch mean of the weight each step applied: the static weight times
        the balancer's weight), `skipped_steps` (steps with a non-finite
        loss, never applied), `balanced_loss` with a balancer (its own
        objective), and with a gradient balancer the diagnostics
        `grad_norm/<task>` and `grad_cos/<a>/<b>` (see
        `compile(diagnostics=...)`). In validation and `evaluate`: none,
        every `val_` key is one `keras.Model` logs too.

        Args:
            validation: The extras of the validation logs (`val_` keys).

        Returns:
            The key names, in the order the model logs them.

        Example:

        ```python
        model.compile(optimizer="adam", loss=losses, balancer="upgrad")
        model.extra_log_names()
        # ['a_weight', 'b_weight', 'skipped_steps', 'balanced_loss',
        #  'grad_norm/a', 'grad_norm/b', 'grad_cos/a/b']
        ```
        """
        if validation or not hasattr(self, "_task_weight_trackers"):
            return []
        names = [*self._task_weight_trackers.entry_names, "skipped_steps"]
        if self._balanced_loss_tracker is not None:
            names.append("balanced_loss")
        for tracker in self._diagnostic_trackers:
            names += tracker.entry_names
        return names

    def _cosines(self) -> bool:
        """Whether the pairwise gradient cosines are logged."""
        if self._diagnostics == "auto":
            return self.num_tasks <= MAX_TASKS_FOR_COSINES
        return self._diagnostics == "all"

    @property
    def metrics(self) -> list:
        # Keras' compile creates a `loss` tracker of its own, which our
        # train and test steps never update: report ours under that name.
        ours = getattr(self, "_total_loss_tracker", None)
        metrics = [m for m in super().metrics if m.name != "loss" or m is ours]
        if getattr(self, "_evaluating", False):
            # Task weights, gradient diagnostics, skipped steps and the
            # balancer's objective exist only in training (see
            # `extra_log_names`).
            training_only = self._training_only_trackers()
            metrics = [m for m in metrics if all(m is not t for t in training_only)]
        return metrics

    def get_compile_config(self) -> dict | None:
        config = super().get_compile_config()
        if config and hasattr(self, "_mtl_compile_args"):
            config = {**config, **self._mtl_compile_args}
        return config

    def compile_from_config(self, config: dict) -> None:
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # ------------------------------------------------------------ the losses

    def compute_task_losses(self, y: Any, y_pred: Any,
                            sample_weight: Any = None) -> Tensor:
        """The unweighted per-task losses, a float32 tensor of shape (K,).

        Args:
            y: A dict `{task: labels}` (missing labels marked by -1 / NaN).
            y_pred: The model outputs, a dict `{task: output}`.
            sample_weight: `None`, one array for every task, or a dict
                `{task: per-sample weights}`.
        """
        loss_list = self.compute_task_loss_list
        if type(self).compute_task_loss_list is _loss_list_from_tensor:
            # A subclass that overrides this method (see `__init_subclass__`).
            loss_list = functools.partial(MultiTaskModel.compute_task_loss_list, self)
        return ops.stack(loss_list(y, y_pred, sample_weight))

    def compute_task_loss_list(self, y: Any, y_pred: Any,
                               sample_weight: Any = None) -> list:
        """The unweighted per-task losses as a list of K scalars.

        The one task-loss hook of the engine (`EngineModel`), on every
        path. The gradient engine differentiates each one alone: a backward
        pass from the stacked vector would visit every task's head (K passes
        over K heads, a graph quadratic in K). Customise the losses here; a
        subclass that overrides `compute_task_losses` instead gets this list
        read from its tensor. Arguments as for `compute_task_losses`.
        """
        self._check_label_keys(y)
        self._check_task_keys("sample_weight", sample_weight)
        losses = []
        for task in self.task_names:
            loss_fn = self.task_losses[task]
            check_label_dtype(task, y[task])
            check_label_shape(task, loss_fn, y[task], y_pred[task])
            weight = sample_weight
            if isinstance(sample_weight, dict):
                weight = sample_weight.get(task)
            if weight is not None:
                check_sample_weight_shape(task, weight, y_pred[task])
            labels = check_class_ids(task, loss_fn, y[task], y_pred[task])
            losses.append(masked_task_loss(loss_fn, labels, y_pred[task], weight,
                                           count=self._backend.replica_mean))
        return losses

    def compute_loss(self, x: Any = None, y: Any = None, y_pred: Any = None,
                     sample_weight: Any = None, training: bool = True) -> Tensor:
        """The loss in Keras' meaning: `Σ task_weight · task_loss` plus the
        regularization losses, whatever the balancer (which is not called).

        It is what `loss` and `val_loss` report; a balancer's own objective
        is logged in training as `balanced_loss`.
        """
        del x, training
        task_losses = self.compute_task_losses(y, y_pred, sample_weight)
        return self._weighted_total(self.task_weights(task_losses))

    def _weighted_total(self, weighted_losses):
        return ops.sum(weighted_losses) + self.regularization_loss()

    def balanced_total(self, weighted_losses: Tensor) -> tuple:
        """`(total, balance)` for the task-weighted losses and the balancer.

        An engine hook: a loss balancer's objective and the weights behind
        it; without one, the plain sum and ones.

        Args:
            weighted_losses: The (K,) task losses times their task weights.
        """
        if isinstance(self.balancer, LossBalancer):
            return self.balancer.combine(weighted_losses)
        return ops.sum(weighted_losses), ops.ones_like(weighted_losses)

    def regularization_loss(self) -> Tensor:
        """The sum of the model's `losses` (regularizers), a float32 scalar
        (0 without any). An engine hook."""
        if not self.losses:
            return ops.zeros((), "float32")
        return ops.sum([ops.cast(ops.sum(loss), "float32") for loss in self.losses])

    def _update_task_trackers(self, task_losses, balance, counted=True) -> None:
        effective = ops.cast(self.task_weights.values, "float32") * balance
        count = ops.cast(counted, "float32")
        # A skipped step (counted=False) leaves the epoch means untouched.
        self._task_loss_trackers.update_state(
            ops.where(counted, task_losses, 0.0), sample_weight=count)
        self._task_weight_trackers.update_state(
            ops.where(counted, effective, 0.0), sample_weight=count)

    # ------------------------------------------------------------ training

    def test_step(self, *args: Any) -> Any:
        """Evaluates one batch: the task losses, `loss` (Σ task weight ×
        task loss + regularization) and the masked metrics. The balancer is
        not called, so evaluation changes none of its state.

        On JAX Keras calls `test_step(state, data)` and expects `(logs,
        state)`: the backend's trainer runs `record_test_step` statelessly.
        """
        if len(args) == 2:
            return self._trainer.test_step(*args)
        return self._backend.step_logs(self, self.record_test_step(args[0]))

    def record_test_step(self, data: Any) -> dict:
        """Evaluates one batch and updates the trackers and metrics: the
        logs. An engine hook (JAX runs it statelessly)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=False)
        task_losses = self.compute_task_losses(y, y_pred, sample_weight)
        weighted = self.task_weights(task_losses)
        self._track_step(x, self._weighted_total(weighted), None, task_losses,
                         ops.ones_like(task_losses), True)
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return logs

    def _training_only_trackers(self) -> list:
        # The task weights too: evaluation applies no balancer, so a
        # `val_<task>_weight` would be another quantity under the same name.
        trackers = [*self._diagnostic_trackers, self._skipped_steps,
                    self._task_weight_trackers]
        if self._balanced_loss_tracker is not None:
            trackers.append(self._balanced_loss_tracker)
        return trackers

    def train_step(self, *args: Any) -> Any:
        """One step of the backend's trainer (`mtl_keras.engine`).

        On TensorFlow Keras calls `train_step(data)`; on JAX it calls
        `train_step(state, data)` and expects `(logs, new_state)`.

        A step whose task losses (or, without loss scaling, gradients) are
        not all finite is skipped (no weight, optimizer or balancer update)
        and counted in `skipped_steps`;
        `model.nonfinite_tasks` flags the tasks of the last such step and
        `mtl_keras.callbacks.TerminateOnNonFiniteLoss` stops training with
        the tasks named.
        """
        if len(args) == 2:  # JAX: stateless
            return self._trainer.train_step(*args)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(args[0])
        step = self._trainer.train_step(x, y, sample_weight)
        return self.record_train_step(x, y, sample_weight, step)

    def record_train_step(
        self, x: Any, y: Any, sample_weight: Any, step: Any
    ) -> dict:
        """The bookkeeping of a step: skipped-step flags, loss trackers,
        gradient diagnostics and metrics; returns the logs. An engine hook:
        `step` is the backend's `mtl_keras.engine.TrainStep`."""
        finite = self._record_finite(step.finite_tasks)
        self._track_step(x, step.loss, step.balanced_loss, step.task_losses,
                         step.balance, finite)
        if step.gramian is not None and self._diagnostic_trackers:
            values = engine.diagnostics(step.gramian, self._cosines())
            self._diagnostic_trackers[0].update_state(
                values, sample_weight=ops.cast(step.balanced, "float32"))
        logs = self.compute_metrics(x, y, step.y_pred, sample_weight=sample_weight)
        return self._backend.step_logs(self, logs)

    @property
    def _trainer(self):
        """The trainer of the current Keras backend (untracked)."""
        trainer = self.__dict__.get("_trainer_instance")
        if trainer is None:
            trainer = self._make_trainer()
            object.__setattr__(self, "_trainer_instance", trainer)
        return trainer

    def _make_trainer(self):
        return self._backend.trainer(self)

    @property
    def _backend(self) -> engine.Backend:
        """The engine of the current Keras backend (untracked)."""
        backend = self.__dict__.get("_backend_instance")
        if backend is None:
            backend = engine.get_backend()
            object.__setattr__(self, "_backend_instance", backend)
        return backend

    def _record_finite(self, finite_tasks):
        """Flags the tasks of a skipped step; returns whether all are finite."""
        return self.nonfinite_flags.record(finite_tasks)

    def _track_step(self, x, loss, balanced_loss, task_losses, balance,
                    finite) -> None:
        """Updates the logs of one step (none of it if the step was skipped).

        `loss` is Σ task weight × task loss + regularization on this replica's
        batch; `balanced_loss` the balancer's objective (`None` in evaluation).
        """
        batch_size = ops.shape(keras.tree.flatten(x)[0])[0]
        count = ops.where(finite, batch_size, 0)
        self._total_loss_tracker.update_state(
            ops.where(finite, loss, 0.0), sample_weight=count)
        if balanced_loss is not None and self._balanced_loss_tracker is not None:
            self._balanced_loss_tracker.update_state(
                ops.where(finite, balanced_loss, 0.0), sample_weight=count)
        self._skipped_steps.update_state(1.0 - ops.cast(finite, "float32"))
        self._update_task_trackers(task_losses, balance, counted=finite)

    # ------------------------------------------------------------ utilities

    @property
    def nonfinite_tasks(self) -> Tensor:
        """1.0 for each task whose loss was not finite at the last skipped step."""
        return self.nonfinite_flags.values

    def get_task_weights(self) -> dict[str, float]:
        """The current task weights, `{task: weight}`."""
        return self.task_weights.as_dict()

    def set_task_weights(self, weights: Mapping[str, float] | Sequence[float]) -> None:
        """Assigns task weights from `{task: weight}` (others unchanged), or
        a sequence in task order; each is checked (`check_task_weight`)."""
        self.task_weights.assign(weights)

    def serving_model(self, name: str | None = None) -> keras.Model:
        """A plain functional model over the same layers, for inference.

        It has the same inputs and task outputs and none of the training
        state (task weights, balancer, optimizer).
        """
        return keras.Model(self.input, self.output, name=name or f"{self.name}_serving")

    def get_config(self) -> dict:
        config = super().get_config()
        if self._shared_tensor is not None:
            config["shared"] = self._shared_tensor_spec()
        return config

    def _shared_tensor_spec(self) -> list:
        """`[layer_name, node_index, tensor_index]` of the shared tensor (a
        list of them for a list of tensors), as Keras records a functional
        model's outputs: read from the config of a model over the same graph
        with the shared tensors as more outputs."""
        shared = _shared_outputs(self._shared_tensor)
        outputs = {**dict(zip(self.task_names, self.outputs)), **shared}
        specs = keras.Model(self.inputs, outputs).get_config()["output_layers"]
        if isinstance(self._shared_tensor, list):
            return [specs[key] for key in shared]
        return specs[_SHARED_KEY]

    @classmethod
    def from_config(cls, config: dict,
                    custom_objects: dict | None = None) -> MultiTaskModel:
        # Keras' functional deserialisation revives the shared tensors as
        # more outputs, which `__init__` takes back out.
        config = dict(config)
        spec = config.pop("shared", None)
        if spec is not None:
            # One spec is [layer_name, node_index, tensor_index].
            shared = {_SHARED_KEY: spec} if isinstance(spec[0], str) else (
                _shared_outputs(list(spec)))
            config["output_layers"] = {**config["output_layers"], **shared}
        return super().from_config(config, custom_objects=custom_objects)

    def fit(self, *args: Any, **kwargs: Any) -> keras.callbacks.History:
        """Trains the model, as `keras.Model.fit`.

        Before anything is built or traced, the labels of `x`/`y` (arrays,
        or a `tf.data.Dataset`'s element spec) and of `validation_data` are
        checked: one entry per task, numeric, with shapes that fit the task
        outputs; an error names the task and the fix. After a call that
        failed, the next one rebuilds the train and test steps
        (`make_train_function(force=True)`), so a fixed call works on the
        same model. Unless `callbacks` holds a `ProgbarLogger` (or
        `verbose=0`), the progress bar is a
        `mtl_keras.progress.TaskProgbarLogger`.

        Args:
            *args: As for `keras.Model.fit`.
            **kwargs: As for `keras.Model.fit`.

        Returns:
            The `History`, as `keras.Model.fit`.

        Example:

        ```python
        history = model.fit(x, {"a": y_a, "b": y_b}, epochs=3)
        ```
        """
        arguments = _bind(keras.Model.fit, self, args, kwargs)
        self._check_data(arguments.get("x"), arguments.get("y"))
        validation = arguments.get("validation_data")
        if isinstance(validation, (tuple, list)):
            self._check_data(*validation[:2])
        elif validation is not None:
            self._check_data(validation, None)
        callbacks = _with_progress_bar(
            arguments.get("callbacks"), arguments.get("verbose", "auto"))
        arguments["callbacks"], guard = _with_values_guard(callbacks, self._backend)
        with self._rebuilt_after_failure(guard), label_errors():
            return super().fit(**arguments)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        arguments = _bind(keras.Model.evaluate, self, args, kwargs)
        self._check_data(arguments.get("x"), arguments.get("y"))
        arguments["callbacks"], guard = _with_values_guard(
            arguments.get("callbacks"), self._backend)
        with self._rebuilt_after_failure(guard), label_errors(), self._evaluation():
            return super().evaluate(**arguments)

    def _check_data(self, x, y=None) -> None:
        """Checks the labels of `fit`/`evaluate` data before anything is
        traced: `y`, or the labels of a `tf.data.Dataset` `x` (from its
        element spec) or of a `PyDataset`'s first batch. Other data (Python
        generators) are checked in the step."""
        if self._custom_task_losses or not hasattr(self, "task_losses"):
            return  # a subclass reads the labels its own way
        labels = y if y is not None else _dataset_labels(x)
        if labels is None:
            return
        self._check_label_keys(labels)
        # With arrays, the outputs' batch size is that of the inputs.
        inputs = keras.tree.flatten(x) if y is not None and x is not None else []
        rows = tuple(getattr(inputs[0], "shape", None) or (None,))[:1] if inputs else ()
        rows = rows or (None,)
        outputs = {t: _Shaped(rows + tuple(output.shape[1:]))
                   for t, output in zip(self.task_names, self.outputs)}
        for task in self.task_names:
            label = labels[task]
            if not (hasattr(label, "shape") and hasattr(label, "dtype")):
                continue  # e.g. a list: converted (and checked) in the step
            check_label_dtype(task, label)
            if getattr(label.shape, "rank", 0) is not None:
                check_label_shape(task, self.task_losses[task], label,
                                  outputs[task])

    def _check_label_keys(self, y) -> None:
        if not isinstance(y, dict):
            raise ValueError(
                "Labels must be a dict {task: labels} with the tasks "
                f"{self.task_names}; got {type(y).__name__}."
            )
        self._check_task_keys("labels", y)
        missing = sorted(set(self.task_names) - set(y))
        if missing:
            raise ValueError(
                f"The labels have no entry for task(s) {missing}. Give every task "
                "a label; mark an unlabelled sample with -1 (class labels) or NaN "
                "(float labels), or with sample weight 0."
            )

    @contextlib.contextmanager
    def _rebuilt_after_failure(self, guard=None):
        """Rebuilds the train and test steps if the previous `fit` /
        `evaluate` failed: a step whose trace failed half-way cannot be
        traced again (TensorFlow refuses to create variables on a non-first
        call of a `tf.function`). On JAX, `guard` (a
        `_compat.JaxValuesGuard`) gives the variables back their values."""
        if self.__dict__.get("_step_failed") and getattr(self, "compiled", False):
            self.make_train_function(force=True)
            self.make_test_function(force=True)
        object.__setattr__(self, "_step_failed", False)
        try:
            yield
        except BaseException:
            object.__setattr__(self, "_step_failed", True)
            if guard is not None:
                guard.restore(self)
            raise

    @contextlib.contextmanager
    def _evaluation(self):
        """While evaluating, `metrics` leaves out the training-only logs, so
        that Keras reads the final logs from the (replica-reduced) metrics."""
        self._evaluating = True
        try:
            yield
        finally:
            self._evaluating = False

    def train_on_batch(self, *args: Any, **kwargs: Any) -> Any:
        arguments = _bind(keras.Model.train_on_batch, self, args, kwargs)
        self._check_data(arguments.get("x"), arguments.get("y"))
        with self._rebuilt_after_failure(), label_errors():
            return super().train_on_batch(*args, **kwargs)

    def test_on_batch(self, *args: Any, **kwargs: Any) -> Any:
        arguments = _bind(keras.Model.test_on_batch, self, args, kwargs)
        self._check_data(arguments.get("x"), arguments.get("y"))
        with self._rebuilt_after_failure(), label_errors(), self._evaluation():
            return super().test_on_batch(*args, **kwargs)


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _loss_list_from_tensor(self, y, y_pred, sample_weight=None) -> list:
    """`compute_task_loss_list` of a subclass that overrides
    `compute_task_losses`: the K losses of its (K,) tensor."""
    return list(ops.unstack(self.compute_task_losses(y, y_pred, sample_weight)))


def _bind(method, model, args, kwargs) -> dict:
    """The arguments of a `keras.Model` method call, by name."""
    bound = inspect.signature(method).bind(model, *args, **kwargs)
    arguments = dict(bound.arguments)
    arguments.pop("self", None)
    arguments.update(arguments.pop("kwargs", {}))
    return arguments


class _Shaped:
    """A stand-in for an output tensor of a known shape."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def _dataset_labels(data):
    """The labels of `(x, y, ...)` data, where they are cheap to read: a
    `tf.data.Dataset`'s element spec, or a `PyDataset`'s first batch."""
    if isinstance(data, tf.data.Dataset):
        element = data.element_spec
    elif isinstance(data, keras.utils.PyDataset) and data.num_batches:
        element = data[0]
    else:
        return None
    if isinstance(element, tuple) and len(element) >= 2:
        return element[1]
    return None


def _with_progress_bar(callbacks, verbose):
    """`callbacks` plus a `TaskProgbarLogger` when the progress bar shows
    and the user gave no `ProgbarLogger` of their own."""
    if verbose == 0 or isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks
    callbacks = keras.tree.flatten(callbacks) if callbacks else []
    if any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks):
        return callbacks
    return [*callbacks, TaskProgbarLogger()]


def _with_values_guard(callbacks, backend):
    """`(callbacks, guard)`: the backend's values guard (on JAX, a
    `_compat.JaxValuesGuard`) first in `callbacks` (`guard` is `None` on
    other backends)."""
    guard = (None if isinstance(callbacks, keras.callbacks.CallbackList)
             else backend.values_guard())
    if guard is None:
        return callbacks, None
    callbacks = keras.tree.flatten(callbacks) if callbacks else []
    return [guard, *callbacks], guard


def _per_output_list(metrics, num_tasks: int) -> bool:
    """Whether `metrics` is a list with one entry (a list or `None`) per
    task, which `keras.Model` reads as the metrics of each output."""
    return (isinstance(metrics, (list, tuple)) and len(metrics) == num_tasks
            and all(m is None or isinstance(m, (list, tuple)) for m in metrics))


def _clone_metric(metric: keras.metrics.Metric) -> keras.metrics.Metric:
    """A fresh metric with the same configuration (and name)."""
    return type(metric).from_config(metric.get_config())


def _shared_outputs(shared) -> dict:
    """The extra outputs that carry the shared tensor(s) through a config."""
    if isinstance(shared, list):
        return {f"{_SHARED_KEY}{i}": value for i, value in enumerate(shared)}
    return {_SHARED_KEY: shared}
