"""Fixtures shared by the unit tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture
def restored_signals() -> Iterator[None]:
    """Worker.run installs its SIGTERM/SIGINT handlers in this process: put pytest's back afterwards."""
    saved = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGTERM", "SIGINT")}
    yield
    for name, handler in saved.items():
        signal.signal(getattr(signal, name), handler)
