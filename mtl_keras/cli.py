"""`python -m mtl_keras.cli`: the `mtl-keras` command (see `mtl_keras_cli`).

The command itself lives in the top-level module `mtl_keras_cli`, so that
`mtl-keras --help` answers without importing this package (and TensorFlow).
"""

import sys

from mtl_keras_cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
