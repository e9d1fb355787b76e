#!/usr/bin/env python
"""Time gradient logging against plain model.fit, side by side.

python scripts/bench.py                       # every workload, 3 repeats
python scripts/bench.py --workloads study-a --repeats 3 --json
"""

import sys

from tbgrad.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
