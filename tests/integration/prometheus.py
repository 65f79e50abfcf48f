"""Debian's Prometheus for tests: started as the cluster user on a loopback address, configured with the scrape
jobs a lab renders with playbooks/prometheus_scrape.yml (one per control plane, each finding its target through
the file_sd target file its supervisor writes), read back through its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from han_worker.control_plane.layout import pick_free_ports
from tests.conftest import run_ansible
from tests.integration.conftest import UnprivilegedEnv
from tests.integration.control_planes import wait_for

PROMETHEUS = "/usr/bin/prometheus"
SCRAPE_INTERVAL = "1s"


def job_name(control_plane: str) -> str:
    """The scrape job the playbook names after a control plane (its prefix, an underscore, the name)."""
    return f"han_control_plane_{control_plane}"


class Prometheus:
    """Debian's Prometheus as the cluster user, its configuration and storage in ``workdir``, scraping each of
    ``control_planes`` (name -> state directory)."""

    def __init__(
        self, env: UnprivilegedEnv, workdir: Path, address: str, control_planes: Mapping[str, Path]
    ) -> None:
        self.directory = workdir / "prometheus"
        self.directory.mkdir()
        config = render_scrape_jobs(self.directory / "prometheus.yml", control_planes)
        for path in (self.directory, config):
            shutil.chown(path, env.user, env.user)
        [port] = pick_free_ports(address, 1)
        self.url = f"http://{address}:{port}"
        self.log = workdir / "prometheus.log"
        argv = [
            "setpriv", f"--reuid={env.user}", f"--regid={env.user}", "--init-groups", "--",
            "env", "-i", f"HOME=/home/{env.user}", PROMETHEUS,
            f"--config.file={config}", f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address={address}:{port}", "--log.level=warn",
        ]  # fmt: skip
        with self.log.open("w") as handle:
            self.process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT)
        wait_for(self._ready, 60, f"Prometheus to be ready:\n{self.output()}", interval=0.3)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"Prometheus exited with {self.process.returncode}:\n{self.output()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector of ``expression``: each sample's labels and value (a float)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return [{**item["metric"], "value": float(item["value"][1])} for item in answer["data"]["result"]]

    def value(self, expression: str) -> float | None:
        """The one sample's value, or None while there is none."""
        result = self.query(expression)
        assert len(result) <= 1, result
        return float(result[0]["value"]) if result else None

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as response:
            return list(json.load(response)["data"]["activeTargets"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


def render_scrape_jobs(path: Path, control_planes: Mapping[str, Path]) -> Path:
    """The scrape jobs a lab renders with playbooks/prometheus_scrape.yml, with a short interval. The file holds
    ``scrape_configs:`` only, a whole configuration for Prometheus (the defaults for the rest)."""
    settings = {
        "prometheus_scrape_file": str(path),
        "prometheus_scrape_interval": SCRAPE_INTERVAL,
        "prometheus_scrape_timeout": SCRAPE_INTERVAL,
        "prometheus_scrape_sd_refresh": "2s",
        "prometheus_scrape_control_planes": [
            {"name": name, "state_dir": str(state_dir)} for name, state_dir in control_planes.items()
        ],
    }
    rendered = run_ansible("ansible-playbook", "playbooks/prometheus_scrape.yml", "-e", json.dumps(settings))
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    return path
