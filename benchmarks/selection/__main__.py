"""``python -m benchmarks.selection``: see the package doc."""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
