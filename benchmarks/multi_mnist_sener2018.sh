#!/usr/bin/env bash
# Background runner of the MultiMNIST sener2018 programme, pinned to one core with
# one TensorFlow thread. Every stage resumes run by run from
# benchmarks/results/multi_mnist_sener2018_runs.jsonl: kill it at any time and
# start it again with the same command (a run cut short is trained again).
# Usage (from the repository root):
#   setsid nohup taskset -c 1 bash benchmarks/multi_mnist_sener2018.sh \
#       >> benchmarks/results/multi_mnist_sener2018_run.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2
run() { python benchmarks/multi_mnist.py --protocol sener2018 --epochs 100 \
    --batch-size 256 --learning-rate 0.0005 --resume "$@"; }
# 1. Fidelity gate: single-task left, right, and equal weights, seed 0.
run --methods ew --seeds 1 || exit 1
# 2. Nothing else runs unless the gate is met.
run --stage gate || exit 0
# 3. Every registered method and DWA, seed 0.
run --methods all --seeds 1 || exit 1
# 4. Static weights tuned by KerasTuner on a validation split of the training data.
run --stage tune --seeds 1 || exit 1
# 5. Seeds 0-2 of single-task, ew, tuned static, MGDA-UB and the two best methods.
run --stage seeds || exit 1
run --stage report
