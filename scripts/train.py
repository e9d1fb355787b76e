#!/usr/bin/env python
"""Train an MLP from flags and log per-layer gradients to TensorBoard.

python scripts/train.py --act tanh --init uniform01
tensorboard --logdir logs
"""

import sys

from tbgrad.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
