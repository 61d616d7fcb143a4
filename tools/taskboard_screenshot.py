"""Regenerates docs/guides/img/taskboard.png from a real run.

Trains a small shapes model with `TaskBoard` and UPGrad (12 epochs on 512
images, about a minute on 2 CPU cores), starts TensorBoard on the logs and
screenshots its Custom Scalars tab with headless Chromium
(`apt-get install chromium`). Run from the repository root:

    python tools/taskboard_screenshot.py
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "guides" / "img" / "taskboard.png"
PORT = 6123


def train(logdir: str) -> None:
    import keras

    import mtl_keras as mtl
    from mtl_keras import architectures, demo
    from mtl_keras.datasets import shapes

    keras.utils.set_random_seed(0)
    train_data = shapes.load("train", num_examples=512, batch_size=64)
    validation = shapes.load("validation", num_examples=256, batch_size=256)
    model = architectures.shapes_network(width=8)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=demo.SHAPES_LOSSES,
                  metrics=demo.shapes_metrics(), balancer="upgrad")
    model.fit(train_data, validation_data=validation, epochs=12, verbose=2,
              callbacks=[mtl.callbacks.TaskBoard(f"{logdir}/upgrad")])


def wait_for(url: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


def main() -> int:
    work = tempfile.mkdtemp()
    train(f"{work}/logs")
    board = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", f"{work}/logs",
         "--host", "127.0.0.1", "--port", str(PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{PORT}/data/plugin/custom_scalars/layout")
        subprocess.run(
            [shutil.which("chromium") or "chromium", "--headless", "--no-sandbox",
             "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={work}/chrome", "--window-size=1400,1100",
             "--virtual-time-budget=20000", f"--screenshot={TARGET}",
             f"http://127.0.0.1:{PORT}/?darkMode=false#custom_scalars"],
            check=True, timeout=180)
    finally:
        board.terminate()
        board.wait()
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
