#!/usr/bin/env python
"""Print a table of runs (accuracy, mean |g| per layer, verdict); --png for figures.

python scripts/report.py logs
python scripts/report.py logs/sweep-act-depth --png reports
"""

import sys

from tbgrad.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
