# Copyright (c) 2026 han-infra developers
# MIT License (see https://opensource.org/licenses/MIT)
# ruff: noqa: E402 - ansible-doc wants the imports below DOCUMENTATION.

from __future__ import annotations

DOCUMENTATION = r"""
name: drill_progress
type: notification
author: han-infra developers (@han-infra)
short_description: Write the failover drill's progress (scenarios started and finished, the table) to a file
description:
  - Made for C(make demo) (C(scripts/demo.py)), which keeps Ansible's output in a log file and shows a person
    one line per step and per drill scenario. The lines of the drill come from this callback.
  - Reads the facts that C(playbooks/failover_drill.yml) sets, and nothing else; in any other play it writes
    nothing. C(_drill) (the plan of the run) gives a V(planned) event; C(_drill_running) (the scenario
    that starts) a V(scenario_started) event; C(_drill_results) (the outcome of every scenario so far, the
    last one new) a V(scenario_finished) event; C(_drill_table) (the table printed at the end) a V(table)
    event.
  - Each event is one JSON object on a line of its own, appended to O(path) as it happens. Keys,
    besides C(event), V(planned) has C(run_id), C(selected), C(reports_dir), C(run_dir);
    V(scenario_started) has C(id), C(title); V(scenario_finished) has C(id), C(title), C(status)
    (V(passed), V(failed), V(not_applicable) or V(not_selected)), C(seconds), C(error), C(logs);
    V(table) has C(lines).
requirements:
  - Enabled by name, for example C(ANSIBLE_CALLBACKS_ENABLED=han.infra.drill_progress).
options:
  path:
    description:
      - The file the events are appended to (created if missing, mode 0600). Nothing is written when unset.
    type: path
    env:
      - name: HAN_DRILL_PROGRESS_FILE
"""

EXAMPLES = r"""
# In a shell: run the drill and follow its scenarios in another terminal.
#   ANSIBLE_CALLBACKS_ENABLED=han.infra.drill_progress HAN_DRILL_PROGRESS_FILE=/tmp/drill.jsonl \
#     ansible-playbook playbooks/failover_drill.yml > /tmp/drill.log
#   tail -f /tmp/drill.jsonl
"""

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from ansible.plugins.callback import CallbackBase


def _facts_of(result: Mapping[str, Any]) -> Mapping[str, Any]:
    """The facts a task result sets; for a loop, those of its items (the last item's value wins)."""
    facts: dict[str, Any] = {}
    for item in result.get("results") or []:
        if isinstance(item, Mapping):
            facts.update(item.get("ansible_facts") or {})
    facts.update(result.get("ansible_facts") or {})
    return facts


def drill_events(facts: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The drill's progress in the facts a task set, in the order the drill sets them."""
    plan = facts.get("_drill")
    if isinstance(plan, Mapping):
        yield {
            "event": "planned",
            **{key: plan.get(key) for key in ("run_id", "selected", "reports_dir", "run_dir")},
        }
    running = facts.get("_drill_running")
    if isinstance(running, Mapping):
        yield {"event": "scenario_started", "id": running.get("id"), "title": running.get("title")}
    results = facts.get("_drill_results")
    if isinstance(results, list) and results and isinstance(results[-1], Mapping):
        keys = ("id", "title", "status", "seconds", "error", "logs")
        yield {"event": "scenario_finished", **{key: results[-1].get(key) for key in keys}}
    table = facts.get("_drill_table")
    if isinstance(table, list):
        yield {"event": "table", "lines": [str(line) for line in table]}


class CallbackModule(CallbackBase):
    """Append the drill's progress events to a file, one JSON object per line."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "han.infra.drill_progress"
    CALLBACK_NEEDS_ENABLED = True

    def v2_runner_on_ok(self, result: Any) -> None:
        path = self.get_option("path")
        if not path:
            return
        # ansible-core 2.19 names the result dict `result`; earlier versions only `_result`.
        data = getattr(result, "result", None) or result._result
        events = list(drill_events(_facts_of(data)))
        if not events:
            return
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "a", encoding="utf-8") as progress:
            progress.writelines(json.dumps(event, default=str) + "\n" for event in events)
