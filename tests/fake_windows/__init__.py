"""FAKE Windows endpoints for tests: no Windows host and no PowerShell can run here.

Each fake answers on 127.0.0.30 (a loopback address of its own) the way one kind of broken WinRM
listener would, so that the role's preflight can be run through a real ``ansible-playbook`` and its
messages checked. :class:`~tests.fake_windows.wsman.FakeWsmanHandler` answers just enough of
WS-Management for ``win_ping`` to succeed and refuses every other module. None of this is Windows.
"""

# A FAKE control plane's certificate authority (its key was thrown away): what credentials files carry.
FAKE_CA_CERT = """\
-----BEGIN CERTIFICATE-----
MIIBqjCCAU+gAwIBAgIUU46WehoCBeJQZmVsLT4KSr8j+FwwCgYIKoZIzj0EAwIw
MTEvMC0GA1UEAwwmRkFLRSBoYW4gY29udHJvbCBwbGFuZSBDQSAodGVzdHMgb25s
eSkwHhcNMjYxMjA2MDczNzA3WhcNMzYxMjAzMDc0MjA3WjAxMS8wLQYDVQQDDCZG
QUtFIGhhbiBjb250cm9sIHBsYW5lIENBICh0ZXN0cyBvbmx5KTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABMDa/TTod5PiyYXH0sQF5nR71sG9uOkNUmuj0K+j2zKW
8y3rlL4rt63HFxC2Ko6+drqUuLAn1nInAPy9ayJcX5KjRTBDMBIGA1UdEwEB/wQI
MAYBAf8CAQAwDgYDVR0PAQH/BAQDAgGGMB0GA1UdDgQWBBSujbnEKCQK+TBSog0t
4HQ2ovtgOzAKBggqhkjOPQQDAgNJADBGAiEAq8q9BezNq56xJB0LDfR78Bx4wZGS
NggLJoCC5VEtFqICIQDnQPw3blIXqnKgjI06KoNw96dgD+ViCkLsyatdBOw6qA==
-----END CERTIFICATE-----
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
    "tls": {"ca_cert": FAKE_CA_CERT},
}
