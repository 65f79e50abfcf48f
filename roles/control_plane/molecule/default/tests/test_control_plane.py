"""Verify the converged control plane on Pegasus: private files, private addresses, endpoints a worker accepts."""

import json

import pytest

STATE_DIR = "/home/pegasus/.han/molecule-control-plane"
ADDRESS = "127.0.0.10"
# The linked inventory holds every testbed machine; these checks are about Pegasus.
testinfra_hosts = ["ansible://pegasus-login"]


@pytest.fixture(scope="module")
def endpoints(host):
    return json.loads(host.file(f"{STATE_DIR}/endpoints.json").content_string)


@pytest.mark.parametrize("name", ["secrets.json", "credentials.json", "endpoints.json"])
def test_secret_and_endpoint_files_are_private(host, name):
    path = host.file(f"{STATE_DIR}/{name}")
    assert path.user == "pegasus"
    assert path.mode == 0o600


def test_state_directory_is_private(host):
    assert host.file(STATE_DIR).mode == 0o700


def test_services_listen_only_on_the_chosen_address(host, endpoints):
    listening = {str(socket) for socket in host.socket.get_listening_sockets()}
    for name, service in endpoints["services"].items():
        assert service["host"] == ADDRESS, name
        assert f"tcp://{ADDRESS}:{service['port']}" in listening, name
        assert f"tcp://0.0.0.0:{service['port']}" not in listening, name


def test_endpoints_validate_with_han_worker(host, endpoints):
    result = host.run(
        f"~/.han/env/bin/han-worker endpoints --mode pegasus --json --endpoints-file {STATE_DIR}/endpoints.json"
    )
    assert result.rc == 0, result.stderr
    selection = json.loads(result.stdout)
    assert selection["endpoints"]["epoch"] == endpoints["epoch"]
    assert {probe["service"]: probe["ok"] for probe in selection["probes"]} == {
        "postgres": True,
        "redis": True,
        "s3": True,
    }


def test_the_job_and_its_successor_are_queued(host):
    jobs = host.run("squeue --noheader --me --name=han-molecule-control-plane --format=%T").stdout.split()
    assert sorted(jobs) == ["PENDING", "RUNNING"]


def test_the_client_configuration_chooses_this_control_plane(host, endpoints):
    path = host.file(f"{STATE_DIR}/client.json")
    assert path.user == "pegasus"
    assert path.mode == 0o600
    assert json.loads(path.content_string) == {
        "mode": "pegasus",
        "pegasus": {
            "endpoints_file": f"{STATE_DIR}/endpoints.json",
            "credentials_file": f"{STATE_DIR}/credentials.json",
        },
    }
    result = host.run(f"~/.han/env/bin/han-worker endpoints --config {STATE_DIR}/client.json --json")
    assert result.rc == 0, result.stderr
    assert json.loads(result.stdout)["endpoints"]["epoch"] == endpoints["epoch"]
