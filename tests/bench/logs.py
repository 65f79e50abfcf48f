"""Times read from the logs of our programs, and waiting for something to appear in them.

``han-worker`` and ``han-control-plane`` log ``2026-11-29 00:01:02,123 LEVEL name: message`` (Python's
asctime: local time, milliseconds). They run on this machine, so a log time and ``time.time()`` here
are one clock; the benchmarks compare them to the moment they acted (a kill, a submission).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

T = TypeVar("T")

_STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"


def logged_at(text: str, pattern: str) -> float | None:
    """Epoch seconds of the first line of ``text`` whose message matches ``pattern`` (a regex), or None."""
    found = re.search(rf"^{_STAMP} .*?{pattern}", text, re.MULTILINE)
    if found is None:
        return None
    # Naive local time, as asctime wrote it; timestamp() reads it in the same local zone.
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def wait_until(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``condition()`` until it returns something other than None (or False); RuntimeError after
    ``timeout`` seconds naming ``what``. Benchmarks raise rather than fail a test: no pytest here."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value is not None and value is not False:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
