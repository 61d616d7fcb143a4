"""Keras callbacks for multi-task training."""

from mtl_keras.callbacks.dynamic_weight_average import DynamicWeightAverage
from mtl_keras.callbacks.multi_task_score import MultiTaskScore
from mtl_keras.callbacks.task_board import TaskBoard
from mtl_keras.callbacks.terminate_on_nonfinite_loss import TerminateOnNonFiniteLoss

__all__ = ["DynamicWeightAverage", "MultiTaskScore", "TaskBoard",
           "TerminateOnNonFiniteLoss"]
