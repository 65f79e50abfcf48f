"""``python -m tests.bench``: the benchmark suite (see :mod:`tests.bench.suite`)."""

import sys

from tests.bench.suite import main

sys.exit(main())
