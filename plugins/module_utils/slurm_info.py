# Copyright (c) han-infra developers
# MIT License (see LICENSE or https://opensource.org/licenses/MIT)
"""What a slurm_job_info task asks for, checked, and the jobs that answer it. Read-only.

Standard library only. Slurm's commands run through the same `Slurm` as slurm_job's, so both modules list
jobs with one squeue argv and one parser (module_utils/slurm.py).
"""

from __future__ import annotations

from ansible_collections.han.infra.plugins.module_utils.slurm import job_facts
from ansible_collections.han.infra.plugins.module_utils.slurm_request import (
    checked_job_ids,
    checked_name,
    checked_states,
)


class InfoRequest:
    """The options of one slurm_job_info task, each checked; OptionError names the one at fault."""

    def __init__(self, params):
        self.name = checked_name(params)
        self.job_ids = checked_job_ids(params.get("job_ids"))
        self.states = checked_states(params.get("states"))


def job_infos(slurm, request, user):
    """The user's jobs of that name and ids (every job of the user when neither is given), in those states
    (any when none), oldest first, each as job_facts() describes it."""
    jobs = slurm.jobs(request.name, user, request.job_ids)
    return [job_facts(job) for job in jobs if not request.states or job.state in request.states]
