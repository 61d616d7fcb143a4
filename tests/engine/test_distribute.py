"""tf.distribute: N replicas give the update of one device on the whole batch."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from _tiny import tiny_network

# One worker runs this module: its module-scoped fixture is built once.
pytestmark = pytest.mark.xdist_group("test_distribute")

HERE = pathlib.Path(__file__).parents[1]  # tests/: the worker scripts
WORKER = str(HERE / "_distributed_worker.py")


def _run(args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, WORKER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=HERE,
        env={**os.environ, **(env or {})},
    )


# "name@N": with `compile(update_every=N)` (a refresh and a reuse step; the
# JacobianBalancer DB-MTL runs the reuse inside the conditional).
MIRRORED = ["none", "uw", "gls", "si", "imtl_l", "rlw", "famo", "mgda", "pcgrad",
            "upgrad", "mgda@3", "db_mtl@2"]


@pytest.fixture(scope="module")
def mirrored_weights(tmp_path_factory):
    """Every balancer's weights after the mirrored and the one-device steps,
    from one worker process (TensorFlow starts once, not once per balancer)."""
    out = tmp_path_factory.mktemp("mirrored")
    result = _run(["mirrored", ",".join(MIRRORED), str(out)], timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.mark.parametrize("balancer", MIRRORED)
def test_mirrored_step_equals_single_device_step(mirrored_weights, balancer):
    arrays = list(np.load(mirrored_weights / f"{balancer}.npz").values())
    half = len(arrays) // 2
    for mirrored, single in zip(arrays[:half], arrays[half:]):
        np.testing.assert_allclose(mirrored, single, rtol=1e-5, atol=1e-6)


def test_the_gramian_engine_says_it_runs_on_one_replica():
    result = _run(["gramian", "upgrad", "-"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "jacobian='gramian' runs on one replica" in result.stdout
    assert "jacobian='loop'" in result.stdout


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_two_workers_end_with_identical_weights(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        out = tmp_path / f"worker{index}.npz"
        process = subprocess.Popen(
            [sys.executable, WORKER, "multiworker", "pcgrad", str(out)],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_CONFIG": json.dumps(tf_config)},
        )
        workers.append((process, out))
    try:
        for process, _ in workers:
            _, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr[-4000:]
    finally:
        for process, _ in workers:
            process.kill()
    first, second = (list(np.load(out).values()) for _, out in workers)
    initial = [v.numpy() for v in tiny_network().trainable_variables]
    for a, b, start in zip(first, second, initial):
        np.testing.assert_array_equal(a, b)
        assert np.abs(a - start).max() > 1e-4  # both really trained
