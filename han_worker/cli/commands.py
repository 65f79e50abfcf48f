"""han-worker's sub-commands: the module that defines each, and the line ``han-worker --help`` shows for it.

The table lets ``han-worker`` import only the module of the command it runs. Between them the modules import
the worker loop, the scaler, the live view and the hardening checker (its certificate code): ~0.16 s of a
process start that a ``han-worker submit`` of a batch (~0.5 s in all) would otherwise pay for nothing. This
module imports nothing, so ``han-worker --help`` imports no command at all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    module: str  # in han_worker.cli; its add_parsers(commands) adds every command the table gives it
    summary: str


# In the order --help lists them; each module's commands together, in the order its add_parsers adds them.
WORKER_COMMANDS: dict[str, Command] = {
    "endpoints": Command(
        "endpoints", "show which control plane (Pegasus or the Mac) a worker would use here, and why"
    ),
    "run": Command("worker", "take jobs from the queues and run them until SIGTERM"),
    "submit": Command("jobs", "submit a job (or a batch: one job per file) and print its id"),
    "wait": Command("jobs", "wait until a job (or every job of a batch) has finished"),
    "status": Command(
        "jobs", "show the control plane, workers, queue depths, pending, dead and timed-out jobs"
    ),
    "jobs": Command("results", "list jobs by state, kind and age, newest first"),
    "show": Command("results", "show one job and each of its attempts"),
    "fetch": Command("results", "download a job's (or a batch's) outputs, checked against the ledger"),
    "cancel": Command("repair", "cancel a job: never run if waiting, stopped if running"),
    "requeue": Command("repair", "run a finished job again"),
    "purge": Command("purge", "delete finished jobs and their objects once old enough"),
    "queues": Command("queues", "list the queues a worker here can serve, or check a list of them"),
    "scale": Command("scale", "submit the Slurm worker jobs an elastic pool needs"),
    "top": Command("top", "show the control plane, queues, workers and recent failures, live"),
    "harden-check": Command(
        "harden_check", "verify the hardening of the control plane running here (read-only)"
    ),
}


def summary(name: str) -> str:
    return WORKER_COMMANDS[name].summary
