#!/usr/bin/env python
"""Reproduce the reference studies and Glorot & Bengio's finding in one command.

python scripts/reproduce.py            # full: ~30 min on 2 cores
python scripts/reproduce.py --quick    # A2 vs A3 and the Glorot check, a minute or two
"""

import sys

from tbgrad.cli.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
