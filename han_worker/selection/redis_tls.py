"""Redis clients over TLS that trust only the control plane's own authority.

The control plane's Valkey listens on a unix socket only; stunnel accepts TLS on the published address and
forwards to it. Every client connects with :func:`tls_redis`: the server must show a certificate that this
control plane's authority issued for the address dialled; never plain text, never the system's trust store.

redis-py 8.1's ``SSLConnection._wrap_socket_with_ssl()`` builds its context from
``ssl.create_default_context()``, which trusts the system's store besides ``ssl_ca_certs`` and costs ~25 ms
per connection (/work/notes/tls/FINDINGS.md). :class:`PinnedSSLConnection` overrides that private method,
so redis-py is pinned to 8.1.x (pyproject.toml) and tests/unit/test_redis_tls.py fails if the override stops
being called (an impostor signed by a CA of the "system" store must be refused).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import redis

from han_worker.selection.tls import pinned_context, require_authority


class PinnedSSLConnection(redis.SSLConnection):
    """An SSL connection whose context holds only the CA it is given (``ssl_ca_data``), built once per CA."""

    def _wrap_socket_with_ssl(self, sock: socket.socket) -> ssl.SSLSocket:
        if not self.ca_data or self.cert_reqs != ssl.CERT_REQUIRED or not self.check_hostname:
            raise redis.RedisError(
                "PinnedSSLConnection needs ssl_ca_data, ssl_cert_reqs='required' and ssl_check_hostname"
            )
        ca_pem = self.ca_data.decode() if isinstance(self.ca_data, bytes) else str(self.ca_data)
        return pinned_context(ca_pem).wrap_socket(sock, server_hostname=self.host)


def tls_redis(host: str, port: int, ca_pem: str, origin: str, **options: Any) -> redis.Redis:
    """A client of the Redis at ``host``:``port`` over TLS, the server verified against ``ca_pem`` (from
    ``origin``, named when it is missing: TLSConfigError). ``options``: redis-py's connection options
    (username, password, timeouts, retry, decode_responses)."""
    pool = redis.ConnectionPool(
        connection_class=PinnedSSLConnection,
        host=host,
        port=port,
        ssl_ca_data=require_authority(ca_pem, origin, "Redis"),
        ssl_cert_reqs="required",
        ssl_check_hostname=True,
        **options,
    )
    return redis.Redis.from_pool(pool)
