"""``han-worker run``: the worker itself, its flags and exit codes (han_worker.worker is the loop).

Exit 0 after a drain (SIGTERM, SIGINT, Ctrl-Break) or an idle timeout; 2 when a queue cannot be served here,
the configuration is invalid or a control plane refuses the credentials.
"""

from __future__ import annotations

import argparse

from han_worker.backends import UnsupportedQueue
from han_worker.cli.options import Commands, add_command, fail, load_config
from han_worker.config import WorkerConfigError
from han_worker.selection.endpoints import EndpointsError
from han_worker.selection.resolver import Selector
from han_worker.worker import keeper
from han_worker.worker.loop import StartError, Worker, backends_to_serve

RUN_HELP = """\
On SIGTERM (Slurm's walltime signal), SIGINT or Ctrl-Break: stop taking jobs, let the job in flight
finish within drain_grace_seconds or give it back to its queue, and exit 0. Exit 2 at once when a
queue cannot be served here, the configuration is invalid or a control plane refuses the credentials.

config file (JSON; every key optional, unknown keys refused; flags and variables override it):
  mode, queues (list)            as --mode and --queues
  pegasus.endpoints_file         Pegasus endpoints (default ~/.han/control-plane/endpoints.json)
  pegasus.credentials_file       its credentials (default: credentials.json beside it)
  mac.host, mac.ports            the Mac's control plane (ports: postgres, redis, s3)
  mac.credentials_file           its credentials (required when the Mac may be used)
  spool_dir                      results kept while their control plane is away (~/.han/spool)
  lease_seconds (30)             a job whose worker is silent this long is taken over
  heartbeat_seconds (10)         how often the lease, the ledger heartbeat and the registry are renewed
  probe_interval_seconds (5)     how often the current control plane is probed
  probe_timeout_seconds (2)      deadline of one probe round, and of connecting
  flap_threshold (3)             failed probes in a row before a failover (and good ones before a return)
  max_attempts (3)               attempts of a submitted job before it is dead
  drain_grace_seconds (30)       time a job in flight gets to finish after SIGTERM
  reconcile_seconds (30)         how often the ledger and the streams are compared (lost jobs re-enqueued)
  idle_timeout_seconds (0)       leave (exit 0) after this long with nothing to do; 0: never
  job_timeouts ({})              job kind -> seconds a job may run before it is stopped, e.g. {"pose": 600};
                                 a job's own submit --timeout wins

"""


def add_parsers(commands: Commands[argparse.ArgumentParser]) -> None:
    _add_run(commands)


def _add_run(commands: Commands[argparse.ArgumentParser]) -> None:
    run = add_command(commands, "run", RUN_HELP)
    run.add_argument(
        "--queues",
        metavar="LIST",
        help="comma-separated queues to serve (default: $HAN_WORKER_QUEUES, else the config file's)",
    )
    run.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="log no line per succeeded job (failures, retries and the rest still go out; the ledger "
        "records every job): for queues of many short jobs",
    )
    run.add_argument(
        "--restart-crashed",
        action="store_true",
        help="run the worker as a child process and start it again when it is killed or crashes (not when "
        "it exits 0 or 2), up to 5 times in 10 minutes; SIGTERM and SIGINT are passed on to it: for a "
        "Slurm task, whose allocation should not end with its worker",
    )
    run.add_argument(
        "--wait-for-control-plane",
        action="store_true",
        help="mode pegasus: at start, wait for a control plane that is down (marked stale, expired, its job "
        "ended, a service not answering) instead of exit 2; --restart-crashed passes it on to the worker it "
        "runs, which may start while its control plane restarts",
    )
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if args.restart_crashed:
        return keeper.keep([*args.argv, "--wait-for-control-plane"])
    try:
        config = load_config(args, need_queues=True)
        backends = backends_to_serve(config.queues)
        worker = Worker(
            config, backends, Selector(config), log_successes=not args.quiet,
            wait_for_control_plane=args.wait_for_control_plane,
        )  # fmt: skip
        return int(worker.run())
    except (WorkerConfigError, UnsupportedQueue, EndpointsError, StartError) as exc:
        return fail("run", exc)
