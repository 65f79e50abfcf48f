"""``han-worker scale``'s choice of control plane: Pegasus's GPUs scale for Pegasus's backlog, so a
configuration in mode ``auto`` is scaled in mode ``pegasus`` (nothing scaled for the Mac's backlog while Pegasus
is down); mode ``mac`` (a lab whose control plane is the Mac) and an explicit ``--mode`` are kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from han_worker.cli.scale import scaling_mode
from han_worker.config import Overrides, WorkerConfig, load_worker_config


def config_in(mode: str, tmp_path: Path) -> WorkerConfig:
    path = tmp_path / "worker.json"
    mac = {"host": "127.0.0.1", "credentials_file": str(tmp_path / "mac-credentials.json")}
    path.write_text(json.dumps({"mode": mode, "queues": ["pose"], "mac": mac}))
    path.chmod(0o600)
    return load_worker_config(path, Overrides(), {})


@pytest.mark.parametrize(
    ("configured", "flag", "scaled_in"),
    [
        ("auto", None, "pegasus"),
        ("pegasus", None, "pegasus"),
        ("mac", None, "mac"),
        ("auto", "mac", "mac"),
        ("mac", "pegasus", "pegasus"),
        ("auto", "auto", "auto"),
    ],
)
def test_the_scaler_uses_pegasus_unless_the_lab_runs_on_the_mac_or_a_flag_says(
    configured: str, flag: str | None, scaled_in: str, tmp_path: Path
) -> None:
    config = config_in(configured, tmp_path)
    assert scaling_mode(config, flag).mode == scaled_in
