"""``han-worker scale``: the scaler of an elastic pool of Slurm worker jobs (issue 20).

It connects to the control plane as a worker with this configuration would (``--config``, the flags), reads
the pool's file (``--pool``) and, at every tick or at once on a submission to one of the pool's queues,
submits the worker jobs the pool lacks (han_worker/scaling/). Its state file (``--state``) keeps what must
survive its restart. SIGTERM or SIGINT ends it between two ticks.
"""

from __future__ import annotations

import argparse
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
from han_worker.config import WorkerConfigError
from han_worker.scaling.pool import PoolFileError, PoolSettings, load_pool_file
from han_worker.scaling.scaler import Scaler, SlurmError, StateFileError
from han_worker.selection.endpoints import EndpointsError
from han_worker.store.link import CONTROL_PLANE_ERRORS, SERVICE_ERRORS, ConnectError, Link, describe

log = logging.getLogger(__name__)

SCALE_HELP = """\
Each tick that changes something logs one line: the backlog, the workers by state, the worker jobs on their
way, the decision and why ("at max_workers (4)", "backlog fits the running workers", "paused after 3
allocations in a row ended before their worker registered: ..."). Exit 0 on SIGTERM; 2 when an input is
wrong; 1 when the control plane cannot be reached at start.

"""


def add_parser(commands: Commands[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = add_command(commands, "scale", "submit the Slurm worker jobs an elastic pool needs", SCALE_HELP)
    pool_help = "the pool's file (job name, queues, job script, sbatch options, limits)"
    state_help = "the scaler's state file (created 0600: worker jobs on their way, failures in a row)"
    parser.add_argument("--pool", type=path_argument, required=True, metavar="FILE", help=pool_help)
    parser.add_argument("--state", type=path_argument, required=True, metavar="FILE", help=state_help)
    parser.add_argument("--once", action="store_true", help="one tick, then exit (its decision on stdout)")
    parser.add_argument(
        "--resume", action="store_true", help="first forget the failures that paused the pool"
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    try:  # every input first (the flags, then the pool's file), then the control plane
        config = load_config(args)
        settings = _pool_settings(args.pool)
        # Between ticks the scaler blocks on the pool's streams for up to tick_seconds (Scaler.wait_for_work).
        link = client.connect(config, name="han-worker scale", block_seconds=settings.tick_seconds)
    except (WorkerConfigError, EndpointsError, PoolFileError) as exc:
        return fail("scale", exc)
    except ConnectError as exc:
        return fail("scale", exc, EXIT_FAILED)
    try:
        return _scale(args, settings, link)
    except StateFileError as exc:
        return fail("scale", f"--state: {exc}")
    except (SlurmError, *SERVICE_ERRORS) as exc:  # type: ignore[misc]  # a tuple of exception classes
        return fail("scale", describe(exc), EXIT_FAILED)
    finally:
        link.close()


def _pool_settings(path: Path) -> PoolSettings:
    try:
        return load_pool_file(path)
    except PoolFileError as exc:
        raise PoolFileError(f"--pool: {exc}") from exc


def _scale(args: argparse.Namespace, settings: PoolSettings, link: Link) -> int:
    scaler = Scaler(settings, link, args.state)
    if args.resume:
        scaler.resume()
    if args.once:
        print(scaler.tick().reason)
    else:
        _loop(scaler)
    return EXIT_OK


def _loop(scaler: Scaler) -> None:
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stopping.set()

    for name in ("SIGTERM", "SIGINT"):
        signal.signal(getattr(signal, name), on_signal)
    while not stopping.is_set():
        try:
            scaler.tick()
            scaler.wait_for_work()
        except (SlurmError, *CONTROL_PLANE_ERRORS) as exc:  # type: ignore[misc]  # the next tick tries again
            log.warning("tick failed: %s", describe(exc))
            stopping.wait(scaler.settings.tick_seconds)
