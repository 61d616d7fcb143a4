"""Every gradient balancer (and FAMO) trains the reference model in fit."""

import keras
import numpy as np
import pytest

from mtl_keras import architectures, balancers
from mtl_keras.datasets import shapes
from mtl_keras.demo import SHAPES_LOSSES

GRADIENT_METHODS = sorted(
    name for name in balancers.available()
    if isinstance(balancers.get(name), balancers.GradientBalancer)
)


def _train(balancer, jit_compile, epochs=3):
    keras.utils.set_random_seed(0)
    images, labels = shapes.load_numpy("train", num_examples=128, image_size=16)
    model = architectures.shapes_network(image_size=16, width=8)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=SHAPES_LOSSES,
                  balancer=balancer, jit_compile=jit_compile)
    before = model.evaluate(images, labels, verbose=0, return_dict=True)
    history = model.fit(images, labels, epochs=epochs, batch_size=32, verbose=0)
    after = model.evaluate(images, labels, verbose=0, return_dict=True)
    return model, history.history, before, after


def test_all_gradient_methods_are_registered():
    expected = {"aligned_mtl", "cagrad", "db_mtl", "dualproj", "graddrop",
                "gradnorm", "gradvac", "imtl_g", "mgda", "mgda_ub", "nash_mtl",
                "pcgrad", "upgrad"}
    assert expected <= set(GRADIENT_METHODS)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("name", [*GRADIENT_METHODS, "famo"])
def test_method_trains_reference_model(name, jit_compile):
    model, history, before, after = _train(name, jit_compile)
    total_before = sum(before[f"{t}_loss"] for t in shapes.TASKS)
    total_after = sum(after[f"{t}_loss"] for t in shapes.TASKS)
    assert total_after < total_before, (before, after)
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)
    assert history["skipped_steps"] == [0.0] * 3
    if isinstance(model.balancer, balancers.GradientBalancer):
        for task in shapes.TASKS:
            assert np.all(np.isfinite(history[f"grad_norm_{task}"]))
            assert all(n > 0 for n in history[f"grad_norm_{task}"])
        cosine = history["grad_cos_cls_count"]
        assert all(-1.0 <= c <= 1.0 for c in cosine)
