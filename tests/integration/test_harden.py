"""Runbook step 6 on the testbed: ``playbooks/harden.yml`` passes on the live control planes, rotates
their credentials (``-e rotate=true``), and fails, naming the problem, on a control plane of our own that
we weaken on purpose.

The inventory's control planes are only started (idempotent), rotated and checked: every weakened setting
is made on this module's own control plane (its own state directory and ports, as ``pegasus``). Rotation
under load (jobs flowing through real workers) is tests/integration/test_rotation.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from han_worker.selection.tls import ca_fingerprints
from tests.conftest import run_ansible
from tests.integration.conftest import UnprivilegedEnv, recap
from tests.integration.control_planes import (
    RunningControlPlane,
    han_worker,
    reload_postgres,
    start_control_plane,
    wait_for,
)

PEGASUS_HOST, MAC_HOST = "pegasus-login", "mac-laptop"
FAILED = re.compile(r"(\d+) hardening check\(s\) failed on (\S+): (.*)")


def harden(*args: str) -> subprocess.CompletedProcess[str]:
    return run_ansible("ansible-playbook", "playbooks/harden.yml", *args)


def own(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """harden.yml against our own control plane (direct launch, on the Pegasus account)."""
    return harden("-l", PEGASUS_HOST, "-e", f"harden_check_state_dir={state_dir}",
                  "-e", "harden_check_launch_mode=direct", *args)  # fmt: skip


def failure_message(result: subprocess.CompletedProcess[str]) -> str:
    match = FAILED.search(result.stdout)
    assert match is not None, result.stdout[-4000:] + result.stderr
    return match.group(0)


# -- (a) the live control planes of the inventory ---------------------------------------------------


@pytest.fixture(scope="module")
def live_control_planes() -> None:
    """Both control planes of the inventory running (already running: nothing changes)."""
    for extra in ((), ("-e", "control_plane_hosts=mac")):
        result = run_ansible("ansible-playbook", "playbooks/control_plane.yml", *extra)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr


@pytest.mark.usefixtures("live_control_planes")
def test_harden_passes_on_the_testbed() -> None:
    result = harden()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    for host in (PEGASUS_HOST, MAC_HOST):
        assert recap(result, host)["failed"] == 0
        assert recap(result, host)["changed"] == 0
        assert re.search(rf"All \d+ hardening checks passed or warned on {host}\.", result.stdout)
    table = result.stdout
    # The table: one row per check and host; SeaweedFS's loopback ports each refuse a caller without
    # credentials (no HTTP, no TLS without the control plane's certificate, no gRPC in clear).
    assert re.search(r"listen +\| pegasus-login +\| PASS +\| tcp 127\.0\.0\.1 \(internal\): internal", table)
    knocked = re.findall(r"open +\| pegasus-login +\| PASS +\| tcp 127\.0\.0\.1:\d+ \(weed\): refused", table)
    assert len(knocked) >= 6, table  # master, volume and filer, each HTTP and gRPC
    assert re.search(
        r"auth +\| mac-laptop +\| PASS +\| redis 127\.0\.0\.20:16379 no credentials: refused: NOAUTH", table
    )
    assert re.search(r"leak +\| pegasus-login +\| PASS +\| Slurm job \d+ batch script", table)
    assert re.search(
        r"leak +\| pegasus-login +\| PASS +\| Slurm job \d+ exported environment: submitted with --export=NONE",
        table,
    )
    assert "FAIL " not in table
    # On Pegasus the checks ran on the job's node, inside its allocation (srun --overlap).
    assert re.search(
        r"control-plane +\| pegasus-login +\| PASS +\| .*checked on \S+ inside Slurm job \d+", table
    )


@pytest.mark.usefixtures("live_control_planes")
def test_harden_changes_nothing_in_check_mode() -> None:
    result = harden("--check")
    assert result.returncode == 0, result.stdout[-4000:]
    assert recap(result, PEGASUS_HOST)["changed"] == 0
    assert recap(result, MAC_HOST)["changed"] == 0


def live_credentials(home: str) -> dict[str, Any]:
    return dict(json.loads(Path(home, ".han/control-plane/credentials.json").read_text()))


VAULT_PASSWORD_FILE = "/var/lib/han-testbed/client/vault-password"  # the testbed's controller (inventory)


def escrowed(host: str) -> dict[str, Any]:
    """The controller's ansible-vault copy of ``host``'s control-plane secrets, decrypted."""
    vault = Path.home() / ".han" / "escrow" / f"{host}-control-plane-secrets.vault"
    assert vault.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256\n")
    assert vault.stat().st_mode & 0o777 == 0o600
    ansible_vault = Path(sys.executable).parent / "ansible-vault"
    viewed = subprocess.run([str(ansible_vault), "view", "--vault-password-file", VAULT_PASSWORD_FILE, str(vault)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return dict(json.loads(viewed.stdout))


@pytest.mark.usefixtures("live_control_planes")
def test_rotate_true_rotates_every_credential_then_verifies() -> None:
    homes = {PEGASUS_HOST: "/home/pegasus", MAC_HOST: "/home/operator"}
    before = {host: live_credentials(home) for host, home in homes.items()}
    # Where workers were configured, their copy of the Mac's credentials must follow the rotation.
    copy = Path(homes[PEGASUS_HOST], ".han/worker/config/mac-credentials.json")
    result = harden("-e", "rotate=true")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    for host, home in homes.items():
        after = live_credentials(home)
        assert after["generation"] == before[host].get("generation", 1) + 1
        assert after["redis"]["password"] != before[host]["redis"]["password"]
        assert after["s3"]["access_key"] != before[host]["s3"]["access_key"]
        # begin, the escrow of the new secrets, retire; on Pegasus also the workers' copy of the Mac's
        # credentials when workers were configured there (the drill does), twice: after begin (both
        # authorities) and after retire (the new one only). The verification changes nothing.
        copies = host == PEGASUS_HOST and Path(home, ".han/worker/config").is_dir()
        assert recap(result, host)["changed"] == 3 + 2 * copies
        # The certificate authority rotated too: the workers' file names the new one only.
        assert after["tls"]["ca_cert"] != before[host]["tls"]["ca_cert"]
        assert len(ca_fingerprints(after["tls"]["ca_cert"])) == 1
        assert re.search(rf"All \d+ hardening checks passed or warned on {host}\.", result.stdout)
        for secret in (after["redis"]["password"], after["postgres"]["password"], after["s3"]["secret_key"]):
            assert secret not in result.stdout
        # The controller's ansible-vault copy follows the rotation.
        escrow = escrowed(host)
        assert escrow["generation"] == after["generation"]
        assert escrow["redis"]["password"] == after["redis"]["password"]
    old = before[PEGASUS_HOST].get("generation", 1)
    assert result.stdout.count(f"every old credential (generation {old}) is refused") == 1 + (
        before[MAC_HOST].get("generation", 1) == old
    )
    assert not Path(homes[PEGASUS_HOST], ".han/control-plane/secrets.previous.json").exists()
    if copy.exists():
        assert json.loads(copy.read_text()) == live_credentials(homes[MAC_HOST])


def test_rotate_that_is_not_a_boolean_is_refused_naming_it() -> None:
    result = harden("-e", "rotate=maybe")
    assert result.returncode != 0
    assert "rotate: 'maybe' is not true or false. Nothing was changed." in result.stdout
    assert "Begin the rotation" not in result.stdout  # refused before anything ran


def test_missing_bind_setting_is_refused_naming_the_variable() -> None:
    result = harden(
        "-l", MAC_HOST, "-e", "control_plane_bind_address=''", "-e", "harden_check_bind_address=''"
    )
    assert result.returncode != 0
    assert "Set harden_check_bind_address or harden_check_bind_network" in result.stdout


# -- (b) our own control plane, weakened on purpose --------------------------------------------------


@pytest.fixture(scope="module")
def weak(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[RunningControlPlane]:
    running = start_control_plane(unprivileged_env, workdir / "state")
    try:
        yield running
    finally:
        running.shutdown()


def test_own_control_plane_passes_before_it_is_weakened(weak: RunningControlPlane) -> None:
    result = own(weak.state_dir)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr


def test_a_0644_credentials_file_fails_naming_it(weak: RunningControlPlane) -> None:
    credentials = weak.state_dir / "credentials.json"
    credentials.chmod(0o644)
    try:
        result = own(weak.state_dir)
    finally:
        credentials.chmod(0o600)
    message = failure_message(result)
    assert result.returncode != 0
    assert f"mode | {credentials} | mode 0644 gives group/others access (want 0600)" in message


def test_a_redis_user_with_password_minioadmin_fails_naming_it(weak: RunningControlPlane) -> None:
    admin = weak.redis_admin()
    admin.execute_command("ACL", "SETUSER", "minioadmin", "on", ">minioadmin", "~*", "+@all")
    try:
        result = own(weak.state_dir)
    finally:
        admin.execute_command("ACL", "DELUSER", "minioadmin")
        admin.close()
    message = failure_message(result)
    port = weak.service("redis").port
    assert (
        f"redis-config | redis 127.0.0.10:{port} user minioadmin | password is the known default 'minioadmin'"
        in message
    )
    assert f"auth | redis 127.0.0.10:{port} minioadmin/minioadmin | ACCEPTED: OK" in message


def test_a_secret_in_a_log_fails_without_showing_it(weak: RunningControlPlane) -> None:
    password = weak.worker_credentials().redis.password
    log = weak.state_dir / "logs" / "debug.log"
    log.write_text(f"connecting with password={password}\n")
    shutil.chown(log, "pegasus", "pegasus")
    try:
        result = own(weak.state_dir, "-v")
    finally:
        log.unlink()
    message = failure_message(result)
    assert "debug.log: credentials.json redis.password" in message
    assert password not in result.stdout + result.stderr  # no_log and the rows never carry a value


def test_postgres_with_tls_off_fails_naming_its_port(weak: RunningControlPlane) -> None:
    """A ``host`` line (TLS off for TCP sessions) in the control plane's pg_hba.conf: harden.yml fails naming
    PostgreSQL's address and port, and the line."""
    data_dir = weak.state_dir / "data" / "postgres"
    hba = data_dir / "pg_hba.conf"
    original = hba.read_text()
    try:
        hba.write_text(original + "host all all 127.0.0.0/8 scram-sha-256\n")
        reload_postgres(data_dir)
        result = own(weak.state_dir)
    finally:
        hba.write_text(original)
        reload_postgres(data_dir)
    message = failure_message(result)
    port = weak.service("postgres").port
    assert f"auth | postgres 127.0.0.10:{port} plain text as han_worker | ACCEPTS plain text" in message
    assert "pg_hba.conf" in message


# A SeaweedFS component started without its key: a stand-in supervisor (it holds the lock of a state
# directory of its own, as a control plane does) whose child is a `weed master` with no security.toml
# (neither in its working directory nor in its HOME), on the node's 127.0.0.1 as the real ones listen.
WEED_WITHOUT_KEY = """
import fcntl, os, socket, subprocess, sys, time
state, weed = sys.argv[1], sys.argv[2]
ports = []
for _ in range(2):
    probe = socket.socket(); probe.bind(("127.0.0.1", 0)); ports.append(probe.getsockname()[1]); probe.close()
fd = os.open(os.path.join(state, "supervisor.lock"), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, f"{os.getpid()}\\n".encode())
os.makedirs(os.path.join(state, "master"), exist_ok=True)
master = subprocess.Popen(
    [weed, "master", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={ports[0]}", f"-port.grpc={ports[1]}",
     "-mdir=" + os.path.join(state, "master")],
    cwd=state, env={"HOME": state, "PATH": "/usr/bin:/bin"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(ports[0], flush=True)
try:
    time.sleep(120)
finally:
    master.kill()
"""


@contextlib.contextmanager
def stand_in_supervisor(env: UnprivilegedEnv, state: Path, script: str, *args: str) -> Iterator[int]:
    """``script`` run by Python as the cluster user in a session of its own, holding ``state``'s supervisor
    lock as a control plane does; yields the port it prints first, and kills its whole session afterwards."""
    state.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(state, env.user, env.user)
    argv = ["setpriv", f"--reuid={env.user}", f"--regid={env.user}", "--init-groups", "--",
            "/usr/bin/python3", "-c", script, str(state), *args]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@pytest.fixture
def weed_without_key(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[tuple[Path, int]]:
    state, weed = workdir / "weed-without-key", str(unprivileged_env.bin_dir / "weed")
    with stand_in_supervisor(unprivileged_env, state, WEED_WITHOUT_KEY, weed) as port:
        wait_for(lambda: http_status(f"http://127.0.0.1:{port}/dir/status") == 200, 60, "weed master")
        yield state, port


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return None


def test_a_seaweedfs_component_without_its_key_fails_naming_its_port(
    weed_without_key: tuple[Path, int],
) -> None:
    state, port = weed_without_key
    result = own(state)
    message = failure_message(result)
    assert re.search(
        rf"open \| tcp 127\.0\.0\.1:{port} \(weed\) \| answers without credentials: HTTP GET /: ", message
    ), message


# -- (c) a listener on every interface ---------------------------------------------------------------
# Only loopback traffic is allowed here: the listener binds 0.0.0.0 for a few seconds and accepts nothing.
# It stands in for a supervisor (it holds the lock of a state directory of its own), so the check finds it
# through the same lock file and `ss` output as a real control plane's ports.

LISTENER = """
import fcntl, os, socket, sys, time
state = sys.argv[1]
sock = socket.socket(); sock.bind(("0.0.0.0", 0)); sock.listen(1)
fd = os.open(os.path.join(state, "supervisor.lock"), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, f"{os.getpid()}\\n".encode())
print(sock.getsockname()[1], flush=True)
time.sleep(120)
"""


@pytest.fixture
def any_address_listener(unprivileged_env: UnprivilegedEnv, workdir: Path) -> Iterator[tuple[Path, int]]:
    state = workdir / "any-address"
    with stand_in_supervisor(unprivileged_env, state, LISTENER) as port:
        wait_for(lambda: (state / "supervisor.lock").read_text().strip().isdigit(), 10, "the lock")
        yield state, port


def test_a_bind_to_every_interface_fails_naming_it(any_address_listener: tuple[Path, int]) -> None:
    state, port = any_address_listener
    result = own(state)
    message = failure_message(result)
    assert (
        f"listen | tcp 0.0.0.0:{port} | python3, not in the endpoints file: binds every interface" in message
    )
    assert "set harden_check_allow_any_address only if that is meant" in message


def test_every_interface_is_a_warning_when_allowed(
    unprivileged_env: UnprivilegedEnv, any_address_listener: tuple[Path, int]
) -> None:
    state, port = any_address_listener
    result = han_worker(unprivileged_env, "harden-check", "--state-dir", str(state), "--bind-network",
                        "127.0.0.10/32", "--allow-any-address", "--json")  # fmt: skip
    rows = json.loads(result.stdout)
    (row,) = [row for row in rows if row["target"] == f"tcp 0.0.0.0:{port}"]
    assert row["result"] == "warn"
    assert "every interface, allowed (harden_check_allow_any_address)" in row["detail"]
    assert result.returncode == 1  # the rest of this stand-in (no endpoints file) still fails
