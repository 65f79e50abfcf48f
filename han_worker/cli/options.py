"""What every ``han-worker`` command that talks to a control plane shares: the options that choose it.

``run``, ``submit``, ``wait``, ``status`` and ``endpoints`` take the same flags and hand them to
:func:`han_worker.config.load_worker_config`, the one place where flags beat the environment, which
beats the ``--config`` file, which beats the defaults. So ``han-worker endpoints`` with a worker's
flags and file chooses exactly what that worker would.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from han_worker.cli.commands import summary
from han_worker.config import DEFAULT_ENDPOINTS_FILE, Overrides, WorkerConfig, load_worker_config
from han_worker.fields import INT4_MAX, MAX_NAME_BYTES, MAX_SECONDS, shown
from han_worker.selection.endpoints import REQUIRED_SERVICES
from han_worker.selection.policy import MODES

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it (128 + SIGINT)

Commands = argparse._SubParsersAction  # argparse's own name; not subscriptable at run time

SELECTION_HELP = f"""\
control plane selection (the same for run, submit, wait, status and endpoints):
  --mode, else $CONTROL_PLANE_MODE, else the config file's "mode", else auto
  pegasus  the Pegasus endpoints file must be valid and healthy, else exit 2 with the reason
  mac      always the Mac's control plane (--mac-host, else $MAC_LAN_IP, else the config file's mac.host)
  auto     Pegasus when it is valid and healthy, else the Mac
The Pegasus endpoints file: --endpoints-file, else $HAN_ENDPOINTS_FILE, else the config file's
pegasus.endpoints_file, else {DEFAULT_ENDPOINTS_FILE} (its credentials.json beside it).
"""


# argparse types. Each refuses with ArgumentTypeError, which argparse prints after the flag's name and
# turns into exit 2; the bounds are the ones han_worker.fields applies to files.


def _seconds(text: str) -> float:
    try:
        if not text.isascii():  # float() reads any script's digits; a typo more likely than Arabic-Indic
            raise ValueError(text)
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a number of seconds") from None
    if seconds > MAX_SECONDS and math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"{shown(text)} must be at most {MAX_SECONDS:g} seconds (30 days)")
    return seconds


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds above 0, at most MAX_SECONDS."""
    seconds = _seconds(text)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"{shown(text)} must be a finite number of seconds > 0")
    return seconds


def non_negative_seconds(text: str) -> float:
    """argparse type: a finite number of seconds, 0 or more, at most MAX_SECONDS."""
    seconds = _seconds(text)
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"{shown(text)} must be a finite number of seconds >= 0")
    return seconds


def positive_count(text: str) -> int:
    """argparse type: a whole number from 1 to PostgreSQL's largest integer (attempt counts, limits)."""
    # len first: int() refuses more than 4300 digits with a ValueError of its own
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or not 1 <= int(text) <= INT4_MAX:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a whole number from 1 to {INT4_MAX}")
    return int(text)


def count_up_to(maximum: int) -> Callable[[str], int]:
    """argparse type: a whole number from 1 to ``maximum`` (a listing's length)."""

    def count(text: str) -> int:
        if not (text.isascii() and text.isdigit() and len(text) <= 10) or not 1 <= int(text) <= maximum:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not a whole number from 1 to {maximum}")
        return int(text)

    return count


def path_argument(text: str) -> Path:
    """argparse type: a path the system can name (not empty, no NUL); whether it exists is checked later."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path names no file")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{shown(text)} holds a NUL character, which no path can")
    longest = max(len(os.fsencode(part)) for part in Path(text).parts)
    if longest > MAX_NAME_BYTES:
        raise argparse.ArgumentTypeError(
            f"{shown(text)} has a name of {longest} bytes; file systems allow {MAX_NAME_BYTES}"
        )
    return Path(text)


def batch_id_argument(text: str) -> str:
    """argparse type: a batch id (a UUID, as submit prints it), in its canonical form."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not a batch id (a UUID, as submit prints it)"
        ) from None


def add_job_or_batch(parser: argparse.ArgumentParser, batch_help: str) -> None:
    """A positional JOB (the id submit printed) or ``--batch ID`` instead; the handler takes exactly one
    (han_worker.cli.jobs.one_of_job_and_batch)."""
    parser.add_argument("job", metavar="JOB", nargs="?", help="the job id that submit printed")
    parser.add_argument("--batch", type=batch_id_argument, metavar="ID", help=batch_help)


def service_port(text: str) -> tuple[str, int]:
    """argparse type: ``SERVICE=PORT`` for one of the control plane's services."""
    service, sep, port = text.partition("=")
    if not sep or not (port.isascii() and port.isdigit() and len(port) <= 5) or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not SERVICE=PORT, port 1-65535 (e.g. redis=6380)")
    if service not in REQUIRED_SERVICES:
        raise argparse.ArgumentTypeError(
            f"{shown(text)}: {shown(service)} is not one of {', '.join(REQUIRED_SERVICES)}"
        )
    return service, int(port)


def add_command(
    commands: Commands[argparse.ArgumentParser], name: str, epilog: str = ""
) -> argparse.ArgumentParser:
    """A sub-command with the selection options and its summary from the table of commands; the RawDescription
    formatter keeps the epilog's columns."""
    line = summary(name)
    parser = commands.add_parser(
        name,
        help=line,
        description=line[0].upper() + line[1:] + ".",
        epilog=epilog + SELECTION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_selection_options(parser)
    return parser


def add_selection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "choosing the control plane (flags beat variables, which beat --config)"
    )
    group.add_argument(
        "--config", type=path_argument, metavar="PATH",
        help="worker configuration file (JSON, as the Ansible roles render it; - reads standard input)",
    )  # fmt: skip
    group.add_argument("--mode", choices=MODES, help="selection mode (see below)")
    group.add_argument(
        "--endpoints-file", type=path_argument, metavar="PATH", help="the Pegasus endpoints file (see below)"
    )
    group.add_argument(
        "--credentials-file", type=path_argument, metavar="PATH",
        help="the Pegasus control plane's credentials for workers (default: credentials.json beside the "
        "endpoints file)",
    )  # fmt: skip
    group.add_argument("--mac-host", metavar="ADDR", help="the Mac's LAN address (default: $MAC_LAN_IP)")
    group.add_argument(
        "--mac-port", action="append", default=[], type=service_port, metavar="SERVICE=PORT",
        help="a Mac service on another port, repeatable (defaults: postgres=5432 redis=6379 s3=9000)",
    )  # fmt: skip
    group.add_argument(
        "--mac-credentials-file", type=path_argument, metavar="PATH",
        help="the Mac control plane's credentials for workers (needed where the Mac may be used)",
    )  # fmt: skip
    group.add_argument(
        "--probe-timeout", type=positive_seconds, metavar="SECONDS",
        help="deadline of one probe round, and of connecting (default: the config file's "
        "probe_timeout_seconds, else 2)",
    )  # fmt: skip


def overrides(args: argparse.Namespace) -> Overrides:
    mac_ports: Sequence[tuple[str, int]] = args.mac_port
    return Overrides(
        mode=args.mode,
        queues=getattr(args, "queues", None),
        endpoints_file=args.endpoints_file,
        credentials_file=args.credentials_file,
        mac_host=args.mac_host,
        mac_ports=dict(mac_ports) or None,
        mac_credentials_file=args.mac_credentials_file,
        probe_timeout_seconds=args.probe_timeout,
    )


def load_config(args: argparse.Namespace, *, need_queues: bool = False) -> WorkerConfig:
    return load_worker_config(args.config, overrides(args), os.environ, need_queues=need_queues)


def fail(command: str, message: object, code: int = EXIT_USAGE) -> int:
    print(f"han-worker {command}: {message}", file=sys.stderr)
    return code
