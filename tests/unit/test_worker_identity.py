"""The worker id says which Slurm job (array task) a worker runs in: the ledger keeps it with every attempt."""

from __future__ import annotations

import pytest

from han_worker.worker.loop import Identity, slurm_job_label


@pytest.mark.parametrize(
    ("env", "label"),
    [
        ({"SLURM_ARRAY_JOB_ID": "281", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "284"}, "281_3"),
        ({"SLURM_JOB_ID": "125"}, "125"),
        ({}, ""),
        ({"SLURM_JOB_ID": "12; rm -rf /"}, ""),
        ({"SLURM_ARRAY_JOB_ID": "281", "SLURM_ARRAY_TASK_ID": "", "SLURM_JOB_ID": "284"}, "284"),
    ],
)
def test_slurm_job_label(env: dict[str, str], label: str) -> None:
    assert slurm_job_label(env) == label


def test_a_worker_in_an_array_task_names_it_and_keeps_its_pid_second_to_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "281")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "282")
    identity = Identity.here("linux")
    assert "-slurm281_0-" in identity.worker_id
    assert identity.worker_id.rsplit("-", 2)[1].isdigit()
    assert identity.slurm_job_id == "282"


def test_outside_slurm_the_id_is_host_pid_random(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    identity = Identity.here("linux")
    assert "slurm" not in identity.worker_id
    assert identity.worker_id.startswith(f"{identity.host}-")
