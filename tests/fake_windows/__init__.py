"""FAKE Windows endpoints for tests: no Windows host and no PowerShell can run here.

Each fake answers on 127.0.0.30 (a loopback address of its own) the way one kind of broken WinRM
listener would, so that the role's preflight can be run through a real ``ansible-playbook`` and its
messages checked. :class:`~tests.fake_windows.wsman.FakeWsmanHandler` answers just enough of
WS-Management for ``win_ping`` to succeed and refuses every other module. None of this is Windows.
"""

# The Mac control plane's worker credentials as the FAKE tests hand them to the windows_worker role.
FAKE_MAC_CREDENTIALS: dict[str, object] = {
    "schema": 1,
    "postgres": {"user": "han_worker", "password": "fake-postgres-password-1234", "database": "han"},
    "redis": {"user": "han-worker", "password": "fake-redis-password-12345678"},
    "s3": {
        "access_key": "han-worker-fake",
        "secret_key": "fake-s3-secret-key-1234567",
        "bucket": "han-artifacts",
    },
}
