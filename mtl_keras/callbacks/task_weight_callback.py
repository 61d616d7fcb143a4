"""`TaskWeightCallback`: the base class of rules that set the task weights."""

from __future__ import annotations

import warnings
import zlib

import keras
import numpy as np

from mtl_keras.callbacks.task_history import TaskHistory
from mtl_keras.task_weight_history import TaskWeightHistory
from mtl_keras.task_weights import TaskWeights, check_task_weight

FREQUENCIES = ("epoch", "batch")


@keras.saving.register_keras_serializable(package="mtl_keras")
class TaskWeightCallback(keras.callbacks.Callback):
    """Sets `model.task_weights` from a rule; owns the plumbing around it.

    A subclass implements one method, `compute_task_weights(step, history)`,
    returning `{task: weight}` for every task. The base class:

    - records, per task, the monitored log entry (`<task>_loss` unless
      `monitor` says otherwise) into a `TaskHistory` kept in the model's
      weights, so that `keras.callbacks.BackupAndRestore` and `.keras`
      files resume the rule exactly, whatever the order of the callbacks;
    - calls the rule at the start of every epoch (`frequency="epoch"`,
      `step` is the epoch) or also after every batch (`frequency="batch"`,
      `step` is `model.optimizer.iterations`, the step the weights are for);
    - checks the weights (every task, finite, ≥ 0) and writes them into the
      model's task weights, which scale each task loss before a balancer
      sees it. The model logs them as `<task>_weight`.

    What is recorded: at epoch frequency, the epoch mean of each monitored
    entry (a `val_` entry is taken when validation ends); at batch
    frequency, for the model's `<task>_loss` entries the mean loss of the
    steps since the previous batch callback (Keras logs running means; the
    model averages each task loss over the steps), for other entries the
    logged value. Weights set after a batch apply from the next step on.

    One `TaskWeightCallback` at a time: the history belongs to one rule, and
    a different rule starts it afresh.

    Args:
        monitor: The log entry recorded for each task: a template such as
            `"val_{task}_accuracy"`, or a dict `{task: log key}`. Default
            `"{task}_loss"` (the unweighted training loss).
        frequency: `"epoch"` or `"batch"`; default: the class attribute.
        history_length: How many past observations the rule sees (0 to
            `TaskWeightHistory.CAPACITY`); default: the class attribute.
        reset_each_epoch: Whether the history restarts every epoch; default:
            the class attribute.

    Example:

    ```python
    class WarmUpSeg(mtl_keras.callbacks.TaskWeightCallback):
        def compute_task_weights(self, step, history):
            return {"cls": 1.0, "seg": min(1.0, step / 5)}
    ```
    """

    frequency: str = "epoch"
    history_length: int = 2
    reset_each_epoch: bool = False

    def __init__(
        self,
        monitor: str | dict[str, str] | None = None,
        frequency: str | None = None,
        history_length: int | None = None,
        reset_each_epoch: bool | None = None,
    ) -> None:
        super().__init__()
        if frequency is not None:
            self.frequency = frequency
        if history_length is not None:
            self.history_length = history_length
        if reset_each_epoch is not None:
            self.reset_each_epoch = bool(reset_each_epoch)
        self.monitor = "{task}_loss" if monitor is None else monitor
        self._check_arguments()
        self._keys: dict[str, str] = {}
        self._fitting = False
        self._observed_this_epoch = False
        self._previous_means = None

    def _check_arguments(self) -> None:
        name = type(self).__name__
        if self.frequency not in FREQUENCIES:
            raise ValueError(
                f"{name}: frequency must be 'epoch' or 'batch', got "
                f"{self.frequency!r}.")
        capacity = TaskWeightHistory.CAPACITY
        if not 0 <= int(self.history_length) <= capacity:
            raise ValueError(
                f"{name}: history_length must be in [0, {capacity}], got "
                f"{self.history_length}.")
        monitor = self.monitor
        keys = monitor.values() if isinstance(monitor, dict) else [monitor]
        if isinstance(self.monitor, str) and "{task}" not in self.monitor:
            raise ValueError(
                f"{name}: a monitor template needs '{{task}}', e.g. "
                f"'val_{{task}}_accuracy'; got {self.monitor!r}. Give a dict "
                "{task: log key} for names that do not follow one pattern.")
        validation = {str(key).startswith("val_") for key in keys}
        if len(validation) > 1:
            raise ValueError(
                f"{name}: monitor mixes validation ('val_...') and training log "
                f"entries: {self.monitor}. Monitor one kind.")
        self._validation = validation == {True}
        if self._validation and self.frequency == "batch":
            raise ValueError(
                f"{name}: validation entries ({self.monitor}) exist once per "
                "epoch; use frequency='epoch' or a training entry.")

    # ------------------------------------------------------------ the rule

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "compute_weights" in vars(cls) and "compute_task_weights" not in vars(cls):
            # The name up to 0.2.0: a balancer's `compute_weights` is another
            # contract (weights from losses or the Gramian, every step).
            warnings.warn(
                f"{cls.__name__}.compute_weights(step, history) is deprecated: "
                "name the rule `compute_task_weights(step, history)`.",
                DeprecationWarning, stacklevel=2)
            cls.compute_task_weights = cls.compute_weights

    def compute_task_weights(self, step: int,
                             history: TaskHistory) -> dict[str, float]:
        """The task weights for `step`: `{task: weight}` for every task.

        (Not a balancer's `compute_weights`, which weighs one step's losses
        or Gramian: this rule sets the model's task weights between steps.)

        Args:
            step: The epoch (epoch frequency) or the optimizer step (batch
                frequency) the weights will be used for.
            history: What was recorded so far (see `TaskHistory`).
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement "
            "compute_task_weights(step, history).")

    def observe(self, values: np.ndarray, history: TaskHistory) -> np.ndarray:
        """What to record for a new observation; by default `values` as is.

        Override to keep a derived quantity instead (e.g. a moving average:
        `history` holds the observations before this one).
        """
        return values

    # ------------------------------------------------------------ plumbing

    def _task_weights(self) -> TaskWeights:
        task_weights = getattr(self.model, "task_weights", None)
        if not isinstance(task_weights, TaskWeights):
            raise ValueError(
                f"{type(self).__name__} needs a mtl_keras.MultiTaskModel (it "
                f"writes the model's task weights); got {type(self.model).__name__}.")
        return task_weights

    def _history_store(self) -> TaskWeightHistory:
        self._task_weights()  # a clear error on another model
        return self.model.task_weight_history

    def _resolve_keys(self, task_names) -> dict[str, str]:
        if not isinstance(self.monitor, dict):
            return {task: self.monitor.format(task=task) for task in task_names}
        missing = [t for t in task_names if t not in self.monitor]
        unknown = sorted(set(self.monitor) - set(task_names), key=str)
        if missing or unknown:
            raise ValueError(
                f"{type(self).__name__}: monitor names tasks "
                f"{sorted(self.monitor, key=str)} but the model's tasks are "
                f"{list(task_names)}: missing {missing}, unknown {unknown}.")
        return {task: self.monitor[task] for task in task_names}

    def _fingerprint(self) -> float:
        """A float32-exact integer naming this rule and what it records."""
        text = (f"{type(self).__module__}.{type(self).__qualname__}|"
                f"{self.frequency}|{sorted(self._keys.items())}")
        return float(zlib.crc32(text.encode()) % (1 << 24) + 1)

    def _history(self, exclude_last: bool = False) -> TaskHistory:
        history = self._history_store()
        rows, count, _ = history.read()
        recent = rows[1:]
        if exclude_last and count > 0:
            recent, count = recent[:-1], count - 1
        kept = min(count, int(self.history_length), len(recent))
        return TaskHistory(
            tasks=tuple(history.task_names),
            values=recent[len(recent) - kept:],
            first=rows[0].copy() if count > 0 else None,
            count=count,
        )

    def _step(self, epoch: int) -> int:
        if self.frequency == "epoch":
            return int(epoch)
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _apply(self, step: int) -> None:
        weights = self.compute_task_weights(step, self._history())
        task_weights = self._task_weights()
        task_weights.assign(check_task_weights(
            weights, task_weights.task_names, type(self).__name__))

    def _logged_values(self, logs, strip_prefix: str = "") -> np.ndarray:
        logs = logs or {}
        values = []
        for task, key in self._keys.items():
            logged_key = key[len(strip_prefix):] if strip_prefix else key
            if logged_key not in logs:
                available = sorted(strip_prefix + k for k in logs)
                raise ValueError(
                    f"{type(self).__name__} monitors '{key}' for task '{task}', "
                    f"but the logs have no such entry (they have {available}). "
                    "Name a logged entry, e.g. compile the metric for that task.")
            values.append(float(logs[logged_key]))
        return np.asarray(values, dtype=np.float64)

    def _recent_means(self, batch: int, logs, means: np.ndarray):
        """Mean of each `<task>_loss` over the steps since the last call.

        `None` when no step was counted since (all skipped as non-finite).
        """
        counted = batch + 1 - int(logs.get("skipped_steps", 0))
        previous_count, previous_means = self._previous_means or (0, None)
        self._previous_means = (counted, means)
        if counted <= previous_count:
            return None
        if previous_means is None:
            return means
        recent = ((counted * means - previous_count * previous_means)
                  / (counted - previous_count))
        is_loss = np.array([key == f"{task}_loss" for task, key in self._keys.items()])
        return np.where(is_loss, recent, means)

    def _record(self, values: np.ndarray, refresh: bool) -> None:
        """Appends an observation, or refreshes the newest one (`refresh`)."""
        store = self._history_store()
        if refresh:
            history = self._history(exclude_last=True)
            store.replace_last(self.observe(values, history))
        else:
            store.push(self.observe(values, self._history()))

    # ------------------------------------------------------------ hooks

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._keys = self._resolve_keys(self._task_weights().task_names)
        self._fitting = True

    def on_train_end(self, logs: dict | None = None) -> None:
        self._fitting = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        # Here, not in on_train_begin: BackupAndRestore may restore the
        # model's weights in its on_train_begin, after this callback's.
        store = self._history_store()
        fingerprint = self._fingerprint()
        if self.reset_each_epoch or store.read()[2] != fingerprint:
            store.reset(fingerprint)
        self._observed_this_epoch = False
        self._previous_means = None
        self._apply(self._step(epoch))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.history_length > 0 and not self._validation:
            # Recorded every batch, not at the epoch's end: a BackupAndRestore
            # listed before this callback saves the model at the epoch's end
            # before this callback would run there.
            values = self._logged_values(logs)
            if self.frequency == "batch":
                values = self._recent_means(batch, logs or {}, values)
            if values is not None:
                refresh = self.frequency == "epoch" and self._observed_this_epoch
                self._record(values, refresh=refresh)
                self._observed_this_epoch = True
        if self.frequency == "batch":
            self._apply(self._step(None))

    def on_test_end(self, logs: dict | None = None) -> None:
        # Validation inside fit calls this before any on_epoch_end.
        if self._fitting and self._validation and self.history_length > 0:
            self._record(self._logged_values(logs, strip_prefix="val_"), refresh=False)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._validation and not any(k.startswith("val_") for k in logs or {}):
            raise ValueError(
                f"{type(self).__name__} monitors validation entries "
                f"({self.monitor}) but epoch {epoch} has no validation logs: pass "
                "`validation_data` to fit (validated every epoch).")

    def get_config(self) -> dict:
        return {
            "monitor": self.monitor,
            "frequency": self.frequency,
            "history_length": self.history_length,
            "reset_each_epoch": self.reset_each_epoch,
        }

    @classmethod
    def from_config(cls, config: dict) -> TaskWeightCallback:
        return cls(**config)


def check_task_weights(weights, task_names, source: str) -> list[float]:
    """`weights` (`{task: w}`) as a list in task order, or a ValueError
    naming the task that is missing, unknown, negative or not finite."""
    if not isinstance(weights, dict):
        raise ValueError(
            f"{source} must return a dict {{task: weight}} for the tasks "
            f"{list(task_names)}; got {type(weights).__name__}.")
    missing = [t for t in task_names if t not in weights]
    unknown = sorted(set(weights) - set(task_names), key=str)
    if missing or unknown:
        raise ValueError(
            f"{source} returned weights for {sorted(weights, key=str)}; the "
            f"model's tasks are {list(task_names)}: missing {missing}, unknown "
            f"{unknown}. Return a weight for every task.")
    return [check_task_weight(task, weights[task], source) for task in task_names]
