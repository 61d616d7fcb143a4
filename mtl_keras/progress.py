"""`TaskProgbarLogger`: the progress bar `MultiTaskModel.fit` shows."""

from __future__ import annotations

from collections.abc import Collection

import keras

__all__ = ["TaskProgbarLogger", "progress_logs"]


def progress_logs(
    logs: dict | None, hidden: Collection[str], show_skipped: bool = False
) -> dict:
    """The logs a progress bar shows: `logs` less the `hidden` keys, and
    less `skipped_steps` while it is 0 (unless `show_skipped`).

    Args:
        logs: The logs Keras passes to a callback (not modified).
        hidden: The keys to leave out (their `val_` forms too).
        show_skipped: Show `skipped_steps` even while no step was skipped.

    Returns:
        A new dict, in the order of `logs`.

    Example:

    ```python
    progress_logs({"loss": 0.5, "a_weight": 1.0, "skipped_steps": 0.0},
                  hidden={"a_weight"})  # {"loss": 0.5}
    ```
    """
    hidden = set(hidden)
    hidden |= {f"val_{key}" for key in hidden}
    shown = {}
    for key, value in (logs or {}).items():
        if key in hidden:
            continue
        if key == "skipped_steps" and not show_skipped and not _positive(value):
            continue
        shown[key] = value
    return shown


def _positive(value) -> bool:
    try:
        return float(keras.ops.convert_to_numpy(value)) > 0
    except (TypeError, ValueError):
        return True


@keras.saving.register_keras_serializable(package="mtl_keras")
class TaskProgbarLogger(keras.callbacks.ProgbarLogger):
    """`keras.callbacks.ProgbarLogger` showing the logs a user reads.

    `MultiTaskModel.fit` installs it when its callbacks hold no
    `ProgbarLogger`. It shows `loss`, the task losses, the metrics and any
    other callback's keys; it leaves out the model's extra keys
    (`model.extra_log_names()`: task weights, `balanced_loss`, gradient
    diagnostics) unless `compile(progress_diagnostics=True)`, and shows
    `skipped_steps` only once a step was skipped. The history, TensorBoard
    and every other callback still get every key.

    Args:
        diagnostics: Show the extra keys, and `skipped_steps` from the
            start, whatever `progress_diagnostics` the model was compiled
            with (`None`: as compiled).

    Example:

    ```python
    model.fit(x, y, epochs=3,
              callbacks=[mtl_keras.progress.TaskProgbarLogger(diagnostics=True)])
    ```
    """

    def __init__(self, diagnostics: bool | None = None) -> None:
        super().__init__()
        self.diagnostics = diagnostics

    def _show_all(self) -> bool:
        if self.diagnostics is not None:
            return bool(self.diagnostics)
        return bool(getattr(self.model, "_progress_diagnostics", False))

    def _shown(self, logs):
        model = self.model
        if self._show_all() or not hasattr(model, "extra_log_names"):
            return progress_logs(logs, (), show_skipped=True)
        hidden = [n for n in model.extra_log_names() if n != "skipped_steps"]
        return progress_logs(logs, hidden)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        super().on_train_batch_end(batch, self._shown(logs))

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        super().on_test_batch_end(batch, self._shown(logs))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(epoch, self._shown(logs))

    def on_test_end(self, logs: dict | None = None) -> None:
        super().on_test_end(self._shown(logs))

    def get_config(self) -> dict:
        return {"diagnostics": self.diagnostics}
