"""``python -m han_worker.control_plane``: the same as the ``han-control-plane`` command."""

import sys

from han_worker.cli import control_plane_main

sys.exit(control_plane_main())
