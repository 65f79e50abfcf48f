"""``han-worker top``: the system live on the operator's terminal, over SSH, with no port opened anywhere.

It selects and connects as every command does, then draws han_worker.observe's snapshot every ``--interval``
seconds until ``q`` or Ctrl-C (exit 0). A control plane that goes away mid-view is a line on the screen, and
the view connects again as a worker would (after a failover: to the Mac). Not on a terminal, or with
``--once``, it prints one plain snapshot and exits.

Exit codes: 0 done; 1 the control plane cannot be reached (at start, or for ``--once``); 2 bad input or an
unusable configuration, as for ``status``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TextIO

from rich.console import Console
from rich.live import Live

from han_worker import client
from han_worker.cli.options import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Commands, add_command, fail, load_config
from han_worker.config import WorkerConfig, WorkerConfigError
from han_worker.fields import shown
from han_worker.observe.snapshot import take_snapshot
from han_worker.observe.successors import queued_successors
from han_worker.observe.view import ViewState, render, render_plain
from han_worker.selection.endpoints import EndpointsError
from han_worker.store.link import SERVICE_ERRORS, ConnectError, Link, describe

log = logging.getLogger(__name__)

MIN_INTERVAL, MAX_INTERVAL, DEFAULT_INTERVAL = 0.5, 3600.0, 2.0
# What a control plane that went away, or cannot be chosen any more, raises while the view runs.
LOST: tuple[type[Exception], ...] = (*SERVICE_ERRORS, ConnectError, EndpointsError, WorkerConfigError)
TOP_HELP = """\
Keys: q quits (exit 0), as does Ctrl-C. The view shows the control plane (source, epoch, walltime left, its
queued successor), each queue (jobs waiting, age of the oldest, running, finished per second), each worker
(host, platform, job in flight and for how long, walltime left) and the latest failures with their error.
When the control plane stops answering, a line says since when and why, and the view connects again.

"""

Keys = Callable[[float], str]  # waits up to that many seconds for keys; what was typed ("" for none)


def refresh_interval(text: str) -> float:
    """argparse type: seconds between refreshes, from MIN_INTERVAL to MAX_INTERVAL."""
    try:
        if not text.isascii():
            raise ValueError(text)
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a number of seconds") from None
    if not (math.isfinite(seconds) and MIN_INTERVAL <= seconds <= MAX_INTERVAL):
        raise argparse.ArgumentTypeError(
            f"{shown(text)} must be from {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds"
        )
    return seconds


def add_parsers(commands: Commands[argparse.ArgumentParser]) -> None:
    top = add_command(commands, "top", TOP_HELP)
    top.add_argument(
        "--interval", type=refresh_interval, default=DEFAULT_INTERVAL, metavar="SECONDS",
        help=f"seconds between refreshes, {MIN_INTERVAL:g}-{MAX_INTERVAL:g} (default: {DEFAULT_INTERVAL:g})",
    )  # fmt: skip
    top.add_argument(
        "--once", action="store_true",
        help="print one plain snapshot and exit (what it does anyway when standard output is not a terminal)",
    )  # fmt: skip
    top.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
        link = client.connect(config, name="han-worker top")
    except (WorkerConfigError, EndpointsError) as exc:
        return fail("top", exc)
    except ConnectError as exc:
        return fail("top", exc, EXIT_USAGE if exc.permanent else EXIT_FAILED)
    if args.once or not sys.stdout.isatty():
        return _once(link)
    view = LiveView(config, link)
    try:
        return view.run(args.interval, sys.stdin)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        view.close()


def _once(link: Link) -> int:
    state = ViewState()
    try:
        state.update(take_snapshot(link, successors=queued_successors))
    except SERVICE_ERRORS as exc:
        return fail("top", f"{link.source}: {describe(exc)}", EXIT_FAILED)
    finally:
        link.close()
    print(render_plain(state))
    return EXIT_OK


class LiveView:
    """The refreshing screen; holds the link, and opens a new one after the control plane went away."""

    def __init__(self, config: WorkerConfig, link: Link) -> None:
        self.config = config
        self.link: Link | None = link
        self.state = ViewState()

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def refresh(self) -> None:
        try:
            if self.link is None:
                self.link = client.connect(self.config, name="han-worker top")
            self.state.update(take_snapshot(self.link, successors=queued_successors))
        except LOST as exc:
            where = f"{self.link.source}: " if self.link is not None else ""
            self.state.lost(datetime.now(timezone.utc), where + describe(exc))
            self.close()

    def run(self, interval: float, keyboard: TextIO) -> int:
        # Log lines would tear the screen; what goes wrong is on it (the unreachable line).
        logging.disable(logging.CRITICAL)
        try:
            with (
                keys_of(keyboard) as wait_for_keys,
                Live(console=Console(), screen=True, auto_refresh=False, redirect_stderr=False) as live,
            ):
                while True:
                    self.refresh()
                    live.update(render(self.state, interval), refresh=True)
                    if _quit_within(interval, wait_for_keys):
                        return EXIT_OK
        finally:
            logging.disable(logging.NOTSET)


def _quit_within(seconds: float, wait_for_keys: Keys) -> bool:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if "q" in wait_for_keys(left).lower():
            return True
    return False


@contextmanager
def keys_of(stream: TextIO) -> Iterator[Keys]:
    """Keys typed on ``stream`` one at a time (cbreak mode, restored on the way out); where it is no
    terminal (or on Windows), only the wait: Ctrl-C still quits."""
    try:
        import termios  # noqa: PLC0415 - POSIX only
        import tty  # noqa: PLC0415
    except ImportError:
        yield _no_keys
        return
    try:
        fd = stream.fileno()
        saved = termios.tcgetattr(fd)
    except (OSError, ValueError, termios.error):
        yield _no_keys
        return
    tty.setcbreak(fd)
    try:
        yield lambda seconds: _read_keys(fd, seconds)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _no_keys(seconds: float) -> str:
    time.sleep(seconds)
    return ""


def _read_keys(fd: int, seconds: float) -> str:
    ready, _write, _error = select.select([fd], [], [], seconds)
    return os.read(fd, 64).decode(errors="replace") if ready else ""
