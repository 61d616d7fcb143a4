"""Every gradient balancer (and FAMO) trains the reference model in fit."""

import keras
import numpy as np
import pytest

from mtl_keras import architectures, balancers, methods
from mtl_keras.datasets import shapes
from mtl_keras.demo import SHAPES_LOSSES

GRADIENT_METHODS = sorted(
    method.name for method in methods.all_methods() if method.kind == "gradient")
TRAINED_METHODS = [*GRADIENT_METHODS, "famo"]

# An XLA compile of the reference model's gradient step takes 15-60 s on 2
# CPU cores (MGDA-UB's representation mode over 4 minutes). The default run
# compiles two representative steps on it: the Gramian path with a QP solver
# and FAMO's post-step losses. Every balancer's solver is compiled with XLA on
# its own in test_gradient_balancers.py, and
# `benchmarks/overhead.py --xla-balancers all` trains every method with XLA on
# this model; the other XLA cases here are marked slow.
XLA_ON_REFERENCE = {"upgrad", "famo"}
EPOCHS = 3


def _cases():
    for name in TRAINED_METHODS:
        yield pytest.param(name, False, id=name)
        marks = () if name in XLA_ON_REFERENCE else pytest.mark.slow
        yield pytest.param(name, True, marks=marks, id=f"{name}-xla")


def test_all_gradient_methods_are_registered():
    expected = {"aligned_mtl", "cagrad", "db_mtl", "dualproj", "graddrop",
                "gradnorm", "gradvac", "imtl_g", "mgda", "mgda_ub", "nash_mtl",
                "pcgrad", "upgrad"}
    assert expected <= set(GRADIENT_METHODS)


@pytest.mark.parametrize("name, jit_compile", _cases())
def test_method_trains_reference_model(name, jit_compile):
    keras.utils.set_random_seed(0)
    images, labels = shapes.load_numpy("train", num_examples=128, image_size=16)
    model = architectures.shapes_network(image_size=16, width=8)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=SHAPES_LOSSES,
                  balancer=name, jit_compile=jit_compile)
    history = model.fit(images, labels, epochs=EPOCHS, batch_size=32,
                        verbose=0).history

    # The unweighted task losses, averaged over each epoch, fall.
    totals = np.sum([history[f"{task}_loss"] for task in model.task_names], axis=0)
    assert totals[-1] < totals[0], totals
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)
    assert history["skipped_steps"] == [0.0] * EPOCHS
    if isinstance(model.balancer, balancers.GradientBalancer):
        for task in model.task_names:
            assert all(n > 0 for n in history[f"grad_norm/{task}"])
        cosines = np.ravel([history[f"grad_cos/{a}/{b}"] for a, b in
                            [("cls", "count"), ("cls", "seg"), ("count", "seg")]])
        assert np.all(np.abs(cosines) <= 1.0)
