"""``python -m han_worker`` is ``han-worker``."""

import sys

from han_worker.cli import worker_main

sys.exit(worker_main())
