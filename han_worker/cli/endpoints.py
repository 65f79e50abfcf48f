"""``han-worker endpoints``: which control plane a worker with this configuration would use here, and why.

It reads the same flags, variables and ``--config`` file as ``han-worker run`` and chooses with the same
code and the same authenticated probes, so its answer is the worker's. Exit 0 with the choice on
stdout; exit 2 with the reason when mode ``pegasus`` cannot be satisfied or an input is invalid. With
``--json`` the reason is a field too (``{"ok": false, "error": ...}``), so a role reads it without
parsing a message.
"""

from __future__ import annotations

import argparse
import json
import logging

from han_worker.cli.options import EXIT_OK, EXIT_USAGE, Commands, add_command, fail, load_config
from han_worker.config import WorkerConfig, WorkerConfigError
from han_worker.selection.endpoints import EndpointsError
from han_worker.selection.resolver import Choice, Selector

log = logging.getLogger(__name__)


def add_parsers(commands: Commands[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "endpoints",
        "Exit 0 with the choice; 2 with the reason when there is none (mode pegasus) or an input is\n"
        "wrong.\n\n",
    )
    parser.add_argument(
        "--no-probe",
        action="store_true",
        help="choose without connecting to any service (the worker itself always probes)",
    )
    parser.add_argument("--json", action="store_true", help="print the choice, or why there is none, as JSON")
    parser.set_defaults(handler=run)


def _choose(args: argparse.Namespace) -> tuple[WorkerConfig, Choice]:
    config = load_config(args)
    return config, Selector(config, probe=not args.no_probe).choose()


def _print_choice(choice: Choice) -> None:
    print(f"source: {choice.source}")
    for name, service in choice.endpoints.services.items():
        print(f"{name}: {service.address}")
    print(f"reason: {choice.reason}")
    for result in choice.probes:
        print(f"probe: {result}")


def _as_json(config: WorkerConfig, choice: Choice) -> dict[str, object]:
    return {
        "ok": True,
        "mode": config.mode,
        "source": choice.source,
        "reason": choice.reason,
        "endpoints": choice.endpoints.to_dict(),
        "probes": [result.to_dict() for result in choice.probes],
    }


def run(args: argparse.Namespace) -> int:
    try:
        config, choice = _choose(args)
    except (WorkerConfigError, EndpointsError) as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}, indent=2))
        return fail("endpoints", exc, EXIT_USAGE)
    log.debug("selected %s: %s", choice.source, choice.reason)
    print(json.dumps(_as_json(config, choice), indent=2) if args.json else "", end="")
    if not args.json:
        _print_choice(choice)
    return EXIT_OK
