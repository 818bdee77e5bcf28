"""``python -m benchmarks.selection``: see the package doc."""

import sys

from .run import main

sys.exit(main())
