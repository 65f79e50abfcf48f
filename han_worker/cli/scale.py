"""``han-worker scale``: the scaler of an elastic pool of Slurm worker jobs (issue 20).

It connects to Pegasus's control plane as a worker with this configuration would, in mode ``pegasus`` where
the configuration says ``auto`` (the pool's GPUs are Pegasus's, for Pegasus's backlog: while its control plane
is down nothing is scaled; mode ``mac`` and ``--mode`` are kept), reads the pool's file (``--pool``) and, at
every tick or at once on a submission to one of the pool's queues, submits the worker jobs the pool lacks
(han_worker/scaling/). A tick that loses the control plane connects again, reading the endpoints file: after a
walltime rollover or a restart it goes on with the new epoch; while it is down (at start too) the scaler
waits. Its state file (``--state``) keeps what must survive its restart. SIGTERM or SIGINT ends it between
two ticks.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import threading
from pathlib import Path

from han_worker import client
from han_worker.cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    add_command,
    fail,
    load_config,
    path_argument,
)
from han_worker.config import WorkerConfig, WorkerConfigError
from han_worker.scaling.pool import PoolFileError, PoolSettings, load_pool_file
from han_worker.scaling.scaler import Scaler, SlurmError, StateFileError
from han_worker.selection.endpoints import EndpointsError
from han_worker.selection.policy import PegasusDown
from han_worker.store.link import CONTROL_PLANE_ERRORS, SERVICE_ERRORS, ConnectError, Link, describe

log = logging.getLogger(__name__)

SCALE_HELP = """\
Each tick that changes something logs one line: the backlog, the workers by state, the worker jobs on their
way, the decision and why ("at max_workers (4)", "backlog fits the running workers", "paused after 3
allocations in a row ended before their worker registered: ..."). It uses Pegasus's control plane (mode
pegasus where the config says auto; mac and --mode are kept) and waits while it is down; a lost one is
connected to again (a walltime rollover: its next epoch). Exit 0 on SIGTERM; 2 when an input is wrong, or
with --once when Pegasus is down; 1 when the control plane refuses the credentials.

"""


def add_parsers(commands: Commands[argparse.ArgumentParser]) -> None:
    parser = add_command(commands, "scale", SCALE_HELP)
    pool_help = "the pool's file (job name, queues, job script, sbatch options, limits)"
    state_help = "the scaler's state file (created 0600: worker jobs on their way, failures in a row)"
    parser.add_argument("--pool", type=path_argument, required=True, metavar="FILE", help=pool_help)
    parser.add_argument("--state", type=path_argument, required=True, metavar="FILE", help=state_help)
    parser.add_argument("--once", action="store_true", help="one tick, then exit (its decision on stdout)")
    parser.add_argument(
        "--resume", action="store_true", help="first forget the failures that paused the pool"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    stopping = _stop_on_signals()
    try:  # every input first (the flags, then the pool's file), then the control plane
        config = scaling_mode(load_config(args), args.mode)
        settings = _pool_settings(args.pool)
        link = _connect_when_up(config, settings, stopping, wait=not args.once)
    except (WorkerConfigError, EndpointsError, PoolFileError) as exc:
        return fail("scale", exc)
    except ConnectError as exc:
        return fail("scale", exc, EXIT_FAILED)
    if link is None:
        return EXIT_OK  # stopped while waiting for the control plane
    return _serve(args, Scaler(settings, link, args.state), config, stopping)


def scaling_mode(config: WorkerConfig, flag: str | None) -> WorkerConfig:
    """Pegasus's GPUs for Pegasus's backlog: mode ``auto`` becomes ``pegasus`` (no scaling for the Mac's
    backlog while Pegasus is down); ``mac``, where the lab runs its control plane on the Mac, and ``--mode``
    stay."""
    return dataclasses.replace(config, mode=flag or ("mac" if config.mode == "mac" else "pegasus"))


def _serve(args: argparse.Namespace, scaler: Scaler, config: WorkerConfig, stopping: threading.Event) -> int:
    try:
        return _scale(args, scaler, config, stopping)
    except StateFileError as exc:
        return fail("scale", f"--state: {exc}")
    except (ConnectError, SlurmError, *SERVICE_ERRORS) as exc:  # type: ignore[misc]  # a tuple of classes
        return fail("scale", describe(exc), EXIT_FAILED)
    finally:
        scaler.link.close()


def _stop_on_signals() -> threading.Event:
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stopping.set()

    for name in ("SIGTERM", "SIGINT"):
        signal.signal(getattr(signal, name), on_signal)
    return stopping


def _connect_when_up(
    config: WorkerConfig, settings: PoolSettings, stopping: threading.Event, *, wait: bool = True
) -> Link | None:
    """Pegasus's control plane, connected, once it is up (None if stopped meanwhile). A control plane that is
    down or restarting is waited for (unless not ``wait``: ``--once`` answers now), a tick at a time, with one
    log line when the wait starts; credentials it refuses (ConnectError, permanent) and endpoints that cannot
    be read (EndpointsError) are raised."""
    waiting = False
    while not stopping.is_set():
        try:
            # Between ticks the scaler blocks on the pool's streams for up to tick_seconds (wait_for_work).
            link = client.connect(config, name="han-worker scale", block_seconds=settings.tick_seconds)
        except (PegasusDown, ConnectError) as exc:
            if not wait or (isinstance(exc, ConnectError) and exc.permanent):
                raise
            if not waiting:
                log.warning("the control plane (mode %s) is not usable (%s): nothing is scaled until it is",
                            config.mode, exc)  # fmt: skip
                waiting = True
            stopping.wait(settings.tick_seconds)
            continue
        if waiting:
            log.info("connected to %s: scaling again", link.choice.describe())
        return link
    return None


def _pool_settings(path: Path) -> PoolSettings:
    try:
        return load_pool_file(path)
    except PoolFileError as exc:
        raise PoolFileError(f"--pool: {exc}") from exc


def _scale(args: argparse.Namespace, scaler: Scaler, config: WorkerConfig, stopping: threading.Event) -> int:
    if args.resume:
        scaler.resume()
    if args.once:
        print(scaler.tick().reason)
    else:
        _loop(scaler, config, stopping)
    return EXIT_OK


def _loop(scaler: Scaler, config: WorkerConfig, stopping: threading.Event) -> None:
    while not stopping.is_set():
        try:
            scaler.tick()
            scaler.wait_for_work()
        except SlurmError as exc:  # the next tick tries again
            log.warning("tick failed: %s", describe(exc))
            stopping.wait(scaler.settings.tick_seconds)
        except CONTROL_PLANE_ERRORS as exc:  # a rollover, a restart, or down: connect again when it is up
            log.warning("tick failed: %s; connecting again", describe(exc))
            _reconnect(scaler, config, stopping)


def _reconnect(scaler: Scaler, config: WorkerConfig, stopping: threading.Event) -> None:
    """The scaler's link replaced by a new one to Pegasus's control plane as the endpoints file names it now
    (its next epoch after a rollover), once it is up; the old link closed."""
    stopping.wait(scaler.settings.tick_seconds)
    try:
        fresh = _connect_when_up(config, scaler.settings, stopping)
    except EndpointsError as exc:  # a file rewritten meanwhile: read again at the next try
        log.warning("endpoints not usable: %s", exc)
        return
    if fresh is not None:
        scaler.link.close()
        scaler.link = fresh
