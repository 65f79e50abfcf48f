"""FAKE Isaac Lab trainer for the testbed's Windows STAND-IN. It trains nothing.

Isaac Lab (and Isaac Sim, and a GPU) cannot run on the testbed, so the stand-in's
``windows_worker_isaaclab_command`` (``inventories/local/host_vars/windows-standin.yml``) points here instead
of at ``isaaclab.bat -p scripts\\reinforcement_learning\\rsl_rl\\train.py``. It takes the options that the
``isaaclab_teacher_ppo`` backend appends (``--task``, ``--num_envs``, ``--max_iterations``, ``--seed``, and
the ``--headless`` of the command itself), prints progress lines as rsl_rl's runner does, and writes what a
real run leaves behind, under its working directory (the job's run directory)::

    logs/rsl_rl/fake/<time>/model_<n>.pt      one every --save_interval iterations, and the last one

Each "checkpoint" is a small text file that says it is FAKE and records the arguments: the backend uploads
it like a real one. Standard library only; exits 2 on a bad option (argparse), 0 otherwise; SIGTERM (a
draining worker) stops it at once with exit code 143, as an interrupted trainer would.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

EXPERIMENT = "fake"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="FAKE Isaac Lab trainer (testbed Windows stand-in only).")
    parser.add_argument("--task", default="Isaac-Fake-v0", help="task id (recorded, not trained)")
    parser.add_argument("--num_envs", type=int, default=16, help="number of environments (recorded)")
    parser.add_argument("--max_iterations", type=int, default=3, help="iterations to pretend to run")
    parser.add_argument("--seed", type=int, default=42, help="seed (recorded)")
    parser.add_argument("--save_interval", type=int, default=50, help="iterations between checkpoints")
    parser.add_argument("--seconds_per_iteration", type=float, default=0.05, help="how long one pretends")
    parser.add_argument("--headless", action="store_true", help="accepted, as Isaac Lab's train.py does")
    args = parser.parse_args(argv)
    for name in ("num_envs", "max_iterations", "save_interval"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.seconds_per_iteration < 0:
        parser.error("--seconds_per_iteration must not be negative")
    return args


def save(run_dir: Path, iteration: int, args: argparse.Namespace) -> Path:
    checkpoint = run_dir / f"model_{iteration}.pt"
    record = {"FAKE": "not a model: written by tests/fake_windows/fake_isaaclab_train.py", "iteration": iteration,
              "task": args.task, "num_envs": args.num_envs, "seed": args.seed}  # fmt: skip
    checkpoint.write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
    print(f"Saved checkpoint {checkpoint}", flush=True)
    return checkpoint


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = Path.cwd() / "logs" / "rsl_rl" / EXPERIMENT / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[FAKE Isaac Lab] task={args.task} num_envs={args.num_envs} seed={args.seed} "
          f"max_iterations={args.max_iterations} headless={args.headless}", flush=True)  # fmt: skip
    print(f"[INFO] Logging experiment in directory: {run_dir}", flush=True)
    for iteration in range(args.max_iterations):
        time.sleep(args.seconds_per_iteration)
        reward = round(1.0 - 1.0 / (iteration + 2), 4)
        print(f"Learning iteration {iteration + 1}/{args.max_iterations}  mean reward: {reward}", flush=True)
        if (iteration + 1) % args.save_interval == 0 and iteration + 1 < args.max_iterations:
            save(run_dir, iteration + 1, args)
    save(run_dir, args.max_iterations, args)
    print("[FAKE Isaac Lab] training finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
