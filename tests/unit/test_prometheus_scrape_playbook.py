"""playbooks/prometheus_scrape.yml: the lab's scrape jobs for the control planes' /metrics, rendered on the
controller (localhost): nothing written in check mode, one change and then none, a configuration promtool
accepts, one job per control plane with its own authority, password and target file, and each wrong input
refused with its name. A real Prometheus scraping through the rendered job: tests/integration/test_metrics.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_ansible
from tests.unit.test_alert_rules import run_promtool

PLAYBOOK = "playbooks/prometheus_scrape.yml"


def render(path: Path, *flags: str, **settings: object) -> tuple[int, str]:
    document = {"prometheus_scrape_file": str(path), **settings}
    result = run_ansible("ansible-playbook", PLAYBOOK, *flags, "-e", json.dumps(document))
    return result.returncode, result.stdout + result.stderr


PLANES = [
    {"name": "pegasus", "state_dir": "/home/lab/.han/control-plane/"},
    {"name": "mac", "state_dir": "/Users/op/.han/mac", "targets_file": "/srv/prometheus/sd/han-mac.json"},
]


def test_check_mode_writes_nothing_then_one_change_then_none(tmp_path: Path) -> None:
    target = tmp_path / "han.yml"
    code, output = render(target, "--check", prometheus_scrape_control_planes=PLANES)
    assert code == 0, output
    assert "changed=1" in output
    assert not target.exists()
    code, output = render(target, prometheus_scrape_control_planes=PLANES)
    assert (code, "changed=1" in output) == (0, True), output
    code, output = render(target, prometheus_scrape_control_planes=PLANES)
    assert (code, "changed=0" in output) == (0, True), output
    assert oct(target.stat().st_mode & 0o777) == "0o640"


def test_each_control_plane_gets_its_job_with_its_own_files(tmp_path: Path) -> None:
    target = tmp_path / "han.yml"
    assert render(target, prometheus_scrape_control_planes=PLANES)[0] == 0
    jobs = yaml.safe_load(target.read_text())["scrape_configs"]
    assert [job["job_name"] for job in jobs] == ["han_control_plane_pegasus", "han_control_plane_mac"]
    pegasus, mac = jobs
    assert pegasus == {
        "job_name": "han_control_plane_pegasus",
        "scheme": "https",
        "honor_labels": True,
        "metrics_path": "/metrics",
        "scrape_interval": "30s",
        "scrape_timeout": "10s",
        "tls_config": {"ca_file": "/home/lab/.han/control-plane/metrics-ca.pem"},
        "basic_auth": {
            "username": "han_metrics",
            "password_file": "/home/lab/.han/control-plane/metrics-password",
        },
        "file_sd_configs": [
            {"files": ["/home/lab/.han/control-plane/metrics-targets.json"], "refresh_interval": "30s"}
        ],
    }
    assert mac["file_sd_configs"][0]["files"] == ["/srv/prometheus/sd/han-mac.json"]
    assert mac["basic_auth"]["password_file"] == "/Users/op/.han/mac/metrics-password"
    result = run_promtool("check", "config", str(target))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"prometheus_scrape_interval": "5"}, "prometheus_scrape_interval"),
        ({"prometheus_scrape_timeout": "ten seconds"}, "prometheus_scrape_timeout"),
        ({"prometheus_scrape_job_prefix": "han-cp"}, "prometheus_scrape_job_prefix"),
        ({"prometheus_scrape_username": "Han Metrics"}, "prometheus_scrape_username"),
        ({"prometheus_scrape_file_mode": "640"}, "prometheus_scrape_file_mode"),
        ({"prometheus_scrape_control_planes": []}, "prometheus_scrape_control_planes"),
        ({"prometheus_scrape_control_planes": [PLANES[0], PLANES[0]]}, "prometheus_scrape_control_planes"),
        ({"prometheus_scrape_control_planes": [{"name": "pegasus", "state_dir": "~/.han"}]}, "state_dir"),
        ({"prometheus_scrape_control_planes": [{"name": "vax", "state_dir": "/h"}]}, "name"),
    ],
)
def test_a_wrong_input_is_refused_with_its_name(
    tmp_path: Path, settings: dict[str, object], named: str
) -> None:
    target = tmp_path / "han.yml"
    code, output = render(target, **settings)
    assert code != 0
    assert named in output
    assert not target.exists()


def test_the_file_to_write_is_required(tmp_path: Path) -> None:
    result = run_ansible("ansible-playbook", PLAYBOOK)
    assert result.returncode != 0
    assert "prometheus_scrape_file" in result.stdout + result.stderr
