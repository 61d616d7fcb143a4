"""Built-in multi-task data sets: synthetic shapes and MultiMNIST.

- `shapes`: offline synthetic images with classification, segmentation and counting
  tasks (`shapes.load`, `shapes.load_numpy`, TFDS builder `shapes.Shapes`).
- `multi_mnist`: two overlapping MNIST digits, tasks `left` and `right`
  (`multi_mnist.load`, `multi_mnist.load_numpy`, TFDS builder
  `multi_mnist.MultiMnist`); reads the official MNIST files.

`load` returns a `tf.data.Dataset` and the TFDS builders write TFRecords on
every Keras backend; `fit` on JAX reads `tf.data` pipelines as they are, and
`load_numpy` gives plain arrays for any other pipeline.
"""

from mtl_keras.datasets import multi_mnist, shapes

__all__ = ["multi_mnist", "shapes"]
