"""Keras callbacks for multi-task training."""

from mtl_keras.callbacks.dynamic_task_prioritization import DynamicTaskPrioritization
from mtl_keras.callbacks.dynamic_weight_average import DynamicWeightAverage
from mtl_keras.callbacks.lambda_task_weights import LambdaTaskWeights
from mtl_keras.callbacks.loss_balanced_task_weighting import LossBalancedTaskWeighting
from mtl_keras.callbacks.multi_task_score import MultiTaskScore
from mtl_keras.callbacks.task_board import TaskBoard
from mtl_keras.callbacks.task_history import TaskHistory
from mtl_keras.callbacks.task_weight_callback import TaskWeightCallback
from mtl_keras.callbacks.task_weight_schedule import TaskWeightSchedule
from mtl_keras.callbacks.terminate_on_nonfinite_loss import TerminateOnNonFiniteLoss

__all__ = [
    "DynamicTaskPrioritization",
    "DynamicWeightAverage",
    "LambdaTaskWeights",
    "LossBalancedTaskWeighting",
    "MultiTaskScore",
    "TaskBoard",
    "TaskHistory",
    "TaskWeightCallback",
    "TaskWeightSchedule",
    "TerminateOnNonFiniteLoss",
]
