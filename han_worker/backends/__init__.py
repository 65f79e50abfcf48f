"""The backends a worker can run, found by name in the entry-point group ``han_worker.backends``.

A lab adds its own kind of job by publishing a package with an entry point in that group; the entry point
names a :class:`~han_worker.backends.base.Backend` class (instantiated without arguments) or instance.

A worker serves the backends of the platform it runs on, with one exception that must be asked for: the
testbed's Windows stand-in (a Linux worker launched with the configuration the Windows role renders; no
Windows host can exist there) sets ``HAN_WORKER_STANDIN_PLATFORM=windows``. It then serves the Windows
backends (queue ``gpu``), and records ``windows-standin``, never ``windows``, as its platform in the ledger
and the worker registry, so that no one mistakes it for the real workstation.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points

from han_worker.backends.base import LINUX, MACOS, WINDOWS, Backend
from han_worker.fields import shown

log = logging.getLogger(__name__)

GROUP = "han_worker.backends"


class UnknownKind(ValueError):
    """No backend is registered under that job kind."""


class UnsupportedQueue(ValueError):
    """A worker was asked to serve a queue that no backend of its platform serves."""


# The variable that makes a worker play another platform, the platforms it may play, and what it records then.
STANDIN_VAR = "HAN_WORKER_STANDIN_PLATFORM"
STANDIN_PLATFORMS: Mapping[str, str] = {WINDOWS: "windows-standin"}


class StandinPlatformError(UnsupportedQueue):
    """``HAN_WORKER_STANDIN_PLATFORM`` has a value the worker cannot play; the message names the variable.

    An :class:`UnsupportedQueue`: with such a value no queue can be served, and every caller that refuses a
    queue (exit 2) refuses this the same way.
    """


@dataclass(frozen=True)
class WorkerPlatform:
    """Where a worker runs: ``serves`` picks its backends; ``recorded`` goes to the ledger and registry."""

    serves: str
    recorded: str

    @property
    def standin(self) -> bool:
        return self.serves != self.recorded


def current_platform() -> str:
    """The platform this process really runs on."""
    if sys.platform.startswith("win"):
        return WINDOWS
    if sys.platform == "darwin":
        return MACOS
    return LINUX


def worker_platform(environ: Mapping[str, str] | None = None) -> WorkerPlatform:
    """The real platform, or the one ``HAN_WORKER_STANDIN_PLATFORM`` asks this worker to stand in for.

    Unset or empty: the real platform. ``windows`` (on a host that is not Windows): serve the Windows
    backends, record ``windows-standin``. Anything else is refused, naming the variable.
    """
    environ = os.environ if environ is None else environ
    real = current_platform()
    raw = environ.get(STANDIN_VAR, "")
    if not raw.strip():
        return WorkerPlatform(real, real)
    wanted = raw.strip()
    if wanted not in STANDIN_PLATFORMS:
        known = ", ".join(sorted(STANDIN_PLATFORMS))
        raise StandinPlatformError(
            f"{STANDIN_VAR}={raw!r}: a worker can only stand in for {known} (or leave {STANDIN_VAR} "
            "unset to run as the platform it is on)"
        )
    if wanted == real:
        raise StandinPlatformError(
            f"{STANDIN_VAR}={raw!r}: this worker runs on {real} itself and stands in for nothing; "
            f"unset {STANDIN_VAR}"
        )
    return WorkerPlatform(wanted, STANDIN_PLATFORMS[wanted])


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
        raise UnknownKind(
            f"job kind {shown(kind)} has no backend (known kinds: {', '.join(sorted(backends))})"
        )
    return backends[kind]


def backends_for_queues(
    queues: Iterable[str], platform: str | None = None, backends: dict[str, Backend] | None = None
) -> dict[str, list[Backend]]:
    """The backends this worker runs for each queue; refuses a queue it cannot serve, saying why.

    ``platform`` defaults to the one the worker serves (:func:`worker_platform`: the real one, or the one
    it stands in for), so a stand-in may raise :class:`StandinPlatformError`.
    """
    platform = platform or worker_platform().serves
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
