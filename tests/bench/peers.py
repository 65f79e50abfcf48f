"""What the RQ and Celery task modules share: their Redis, and where a no-op job records its times.

Their workers run as the cluster user with ``HAN_BENCH_REDIS`` naming a 0600 JSON file (host, port,
username, password): the password stays out of argv and out of the environment's values. Each job
appends ``"<enqueued> <started> <finished>"`` (time.time(), one clock: everything runs on this machine)
to the list ``bench:times:<system>``, so the benchmark computes jobs/s and enqueue-to-start latency the
same way for both. The append is one Redis round trip per job that ours does not pay (~0.1 ms here).
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import redis

SETTINGS_ENV = "HAN_BENCH_REDIS"


def times_key(system: str) -> str:
    return f"bench:times:{system}"


def settings() -> dict[str, object]:
    return dict(json.loads(Path(os.environ[SETTINGS_ENV]).read_text()))


def redis_url() -> str:
    """For Celery's broker setting (a URL in memory, never in argv)."""
    found = settings()
    return f"redis://{found['username']}:{found['password']}@{found['host']}:{found['port']}/0"


@cache
def connection() -> redis.Redis:
    found = settings()
    return redis.Redis(
        str(found["host"]), int(str(found["port"])), username=str(found["username"]),
        password=str(found["password"]), socket_timeout=10,
    )  # fmt: skip


def record(connection: redis.Redis, system: str, enqueued: float, started: float, finished: float) -> None:
    connection.rpush(times_key(system), f"{enqueued!r} {started!r} {finished!r}")
