"""The backends a worker can run, found by name in the entry-point group ``han_worker.backends``.

A lab adds its own kind of job by publishing a package with an entry point in that group; the entry point
names a :class:`~han_worker.backends.base.Backend` class (instantiated without arguments) or instance.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from functools import cache
from importlib.metadata import entry_points

from han_worker.backends.base import LINUX, MACOS, WINDOWS, Backend

log = logging.getLogger(__name__)

GROUP = "han_worker.backends"


class UnknownKind(ValueError):
    """No backend is registered under that job kind."""


class UnsupportedQueue(ValueError):
    """A worker was asked to serve a queue that no backend of its platform serves."""


def current_platform() -> str:
    if sys.platform.startswith("win"):
        return WINDOWS
    if sys.platform == "darwin":
        return MACOS
    return LINUX


@cache
def load_backends() -> dict[str, Backend]:
    """Every registered backend by kind; an entry point that fails to load is logged and skipped."""
    backends: dict[str, Backend] = {}
    for entry_point in entry_points(group=GROUP):
        try:
            loaded = entry_point.load()
            backend = loaded() if isinstance(loaded, type) else loaded
        except Exception as exc:  # a broken plugin must not stop the worker from serving the others
            log.warning("backend %s (%s) cannot be loaded: %s", entry_point.name, entry_point.value, exc)
            continue
        if not isinstance(backend, Backend) or backend.name != entry_point.name:
            log.warning(
                "entry point %s does not name a backend called %s; skipped",
                entry_point.value,
                entry_point.name,
            )
            continue
        backends[backend.name] = backend
    return backends


def get_backend(kind: str) -> Backend:
    backends = load_backends()
    if kind not in backends:
        raise UnknownKind(f"job kind {kind!r} has no backend (known kinds: {', '.join(sorted(backends))})")
    return backends[kind]


def backends_for_queues(
    queues: Iterable[str], platform: str | None = None, backends: dict[str, Backend] | None = None
) -> dict[str, list[Backend]]:
    """The backends this worker runs for each queue; refuses a queue it cannot serve, saying why."""
    platform = platform or current_platform()
    known = load_backends() if backends is None else backends
    served: dict[str, list[Backend]] = {}
    for queue in queues:
        on_queue = [backend for backend in known.values() if backend.queue == queue]
        if not on_queue:
            all_queues = ", ".join(sorted({backend.queue for backend in known.values()}))
            raise UnsupportedQueue(f"queue {queue!r} is served by no backend (known queues: {all_queues})")
        runnable = [backend for backend in on_queue if platform in backend.platforms]
        if not runnable:
            names = ", ".join(sorted(backend.name for backend in on_queue))
            where = " and ".join(sorted({p for backend in on_queue for p in backend.platforms}))
            only = "Windows-only" if where == WINDOWS else f"{where}-only"
            raise UnsupportedQueue(
                f"queue {queue!r} runs {names}, which is {only}; this worker runs on {platform}"
                + (": training jobs need the Windows GPU worker" if where == WINDOWS else "")
            )
        served[queue] = runnable
    return served
