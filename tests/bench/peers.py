"""What the RQ and Celery task modules share: their Redis, and where a no-op job records its times.

Their workers run as the cluster user with ``HAN_BENCH_REDIS`` naming a 0600 JSON file (host, port,
username, password, ca_cert: Valkey is reached over TLS only): the password stays out of argv and out of the environment's values. Each job
appends ``"<enqueued> <started> <finished>"`` (time.time(), one clock: everything runs on this machine)
to the list ``bench:times:<system>``, so the benchmark computes jobs/s and enqueue-to-start latency the
same way for both. The append is one Redis round trip per job that ours does not pay (~0.1 ms here).
"""

from __future__ import annotations

import json
import os
import ssl
from functools import cache
from pathlib import Path

import redis

from han_worker.selection.redis_tls import tls_redis
from han_worker.selection.tls import ca_file

SETTINGS_ENV = "HAN_BENCH_REDIS"


def times_key(system: str) -> str:
    return f"bench:times:{system}"


def settings() -> dict[str, object]:
    return dict(json.loads(Path(os.environ[SETTINGS_ENV]).read_text()))


def redis_url() -> str:
    """For Celery's broker setting (a URL in memory, never in argv): TLS (``rediss``), as Valkey is reached
    only through the control plane's stunnel; see :func:`broker_tls`."""
    found = settings()
    return f"rediss://{found['username']}:{found['password']}@{found['host']}:{found['port']}/0"


def broker_tls() -> dict[str, object]:
    """Celery's ``broker_use_ssl``: verify the server against the control plane's authority. kombu hands
    these to redis-py's own SSL connection, which trusts the system's store besides this CA (ours pins it);
    for a benchmark peer on this machine that costs only its ~25 ms per connection."""
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca_file(str(settings()["ca_cert"])))}


@cache
def connection() -> redis.Redis:
    found = settings()
    return tls_redis(
        str(found["host"]), int(str(found["port"])), str(found["ca_cert"]), os.environ[SETTINGS_ENV],
        username=str(found["username"]), password=str(found["password"]), socket_timeout=10,
    )  # fmt: skip


def record(connection: redis.Redis, system: str, enqueued: float, started: float, finished: float) -> None:
    connection.rpush(times_key(system), f"{enqueued!r} {started!r} {finished!r}")
