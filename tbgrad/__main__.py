"""``python -m tbgrad``: the ``tbgrad`` command."""

import sys

from tbgrad.cli import main

if __name__ == "__main__":
    sys.exit(main())
