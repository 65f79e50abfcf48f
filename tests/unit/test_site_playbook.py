"""playbooks/site.yml: the whole deployment in the runbook's order, and nothing but a deployment.

Its real runs (first run and idempotent re-run on the testbed) are in the deploy benchmark
(tests/bench/deploy.py); each play it imports has its own integration tests."""

from __future__ import annotations

import re

import pytest

from tests.conftest import run_ansible

SITE = "playbooks/site.yml"


def test_site_runs_the_runbook_steps_in_order_on_the_inventorys_hosts() -> None:
    listed = run_ansible("ansible-playbook", SITE, "--list-hosts")
    assert listed.returncode == 0, listed.stderr

    plays = re.findall(r"play #\d+ \(([^)]*)\): ([^\t]+)\t", listed.stdout)

    assert plays == [
        ("all", "Check that site.yml is asked to deploy."),
        ("pegasus:mac", "Bootstrap the Pegasus environment."),
        (
            "pegasus:mac",
            "Start or stop the Pegasus control plane.",
        ),  # both control planes, before the workers
        ("pegasus", "Start or stop the Pegasus pose workers."),
        ("windows_gpu", "Install, run, stop or show the Windows GPU worker."),
    ]


@pytest.mark.parametrize("limit", [[], ["--limit", "pegasus-login"], ["--limit", "windows-standin"]])
def test_site_refuses_to_stop_before_any_host_is_touched(limit: list[str]) -> None:
    # --check: were the refusal ever skipped, the stops that follow would only be simulated.
    refused = run_ansible("ansible-playbook", SITE, "--check", *limit, "-e", "state=stopped")

    assert refused.returncode != 0, refused.stdout
    assert "state=stopped: site.yml only deploys (state=started)" in refused.stdout
    assert "Stopping goes workers first, then control planes" in refused.stdout
    assert "PLAY [Bootstrap" not in refused.stdout  # the run ended at the check: no later play started
