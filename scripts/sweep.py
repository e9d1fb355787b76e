#!/usr/bin/env python
"""Train a grid of train.py flag values in parallel, one run folder each.

python scripts/sweep.py --act tanh relu --depth 1 3 5 --seed 1
python scripts/report.py logs/sweep-act-depth --png reports
"""

import sys

from tbgrad.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
