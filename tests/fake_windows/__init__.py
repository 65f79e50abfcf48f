"""FAKE Windows endpoints for tests: no Windows host and no PowerShell can run here.

Each fake answers on 127.0.0.30 (a loopback address of its own) the way one kind of broken WinRM
listener would, so that the role's preflight can be run through a real ``ansible-playbook`` and its
messages checked. :class:`~tests.fake_windows.wsman.FakeWsmanHandler` answers just enough of
WS-Management for ``win_ping`` to succeed and refuses every other module. None of this is Windows.
"""
