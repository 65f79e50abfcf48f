# Copyright (c) 2026 han-infra developers
# MIT License (see https://opensource.org/licenses/MIT)
# ruff: noqa: E402 - validate-modules wants the imports below DOCUMENTATION, EXAMPLES and RETURN.

from __future__ import annotations

DOCUMENTATION = r"""
name: control_plane
author: han-infra developers (@han-infra)
short_description: Choose the control plane (Pegasus or the Mac) exactly as a han worker does
description:
  - Applies the runbook's C(CONTROL_PLANE_MODE) to what the play knows, with the same code the worker
    runs (C(han_worker.selection.policy.select)), so that a play can fail before it submits a worker that
    cannot work.
  - V(pegasus) needs a valid Pegasus endpoints document (not stale, not expired, its Slurm job alive and, when
    probed, healthy) and fails with the reason otherwise; V(mac) always uses the Mac's LAN endpoints; V(auto)
    tries Pegasus first, then the Mac.
  - The Pegasus document is read on Pegasus in the same play, for example with
    C(han-worker endpoints --mode pegasus --no-probe --json), which also checks who owns the file and who can
    write it. Pass its C(endpoints) field, or its C(error) field when it exited 2.
  - The collection's own roles do not need it (C(han.infra.pegasus_worker) runs the worker's whole choice on
    Pegasus instead); it is for plays that decide on the controller.
  - Needs the C(han_worker) package on the controller (C(pip install han-worker), or C(pip install -e .) in
    a checkout of han-infra).
options:
  _terms:
    description: Not used.
    required: false
  mode:
    description:
      - The runbook's C(CONTROL_PLANE_MODE), V(auto), V(pegasus) or V(mac).
      - C(han_worker.selection.policy.MODES) checks it; the names live there only.
    type: str
    default: auto
  pegasus_endpoints:
    description:
      - The Pegasus endpoints document (a dict, or its JSON text), or null when none could be read.
    type: raw
  pegasus_endpoints_error:
    description: Why no Pegasus document could be read (for example C(endpoints.json does not exist)).
    type: str
  pegasus_job_alive:
    description: Whether the document's Slurm job is pending or running; omit when not known.
    type: bool
  mac_host:
    description: The Mac's LAN address (the inventory's C(mac_lan_ip), the runbook's C(MAC_LAN_IP)).
    type: str
  mac_ports:
    description: The Mac control plane's ports by service (C(postgres), C(redis), C(s3)).
    type: dict
    default: {}
  probe:
    description:
      - Whether the controller may connect to the chosen services to check them (a TCP connect under one
        deadline). Leave it off when the controller cannot reach the cluster's private network.
    type: bool
    default: false
  probe_timeout:
    description: Overall deadline of the probes, in seconds.
    type: float
    default: 2.0
"""

EXAMPLES = r"""
- name: Read the Pegasus endpoints on Pegasus (ownership and mode are checked there).
  ansible.builtin.command:
    argv: [~/.han/env/bin/han-worker, endpoints, --mode=pegasus, --no-probe, --json]
  register: pegasus_endpoints
  changed_when: false
  failed_when: pegasus_endpoints.rc not in [0, 2]

- name: Choose the control plane as the worker will.
  ansible.builtin.set_fact:
    control_plane: >-
      {{ lookup('han.infra.control_plane',
                mode=lookup('ansible.builtin.env', 'CONTROL_PLANE_MODE', default='auto'),
                pegasus_endpoints=(pegasus_endpoints.stdout | from_json).endpoints
                  if pegasus_endpoints.rc == 0 else none,
                pegasus_endpoints_error=(pegasus_endpoints.stdout | from_json).error | default(''),
                mac_host=hostvars['mac-laptop'].mac_lan_ip,
                mac_ports={'postgres': 15432, 'redis': 16379, 's3': 19000}) }}

- name: Say which and why.
  ansible.builtin.debug:
    msg: "{{ control_plane.source }}: {{ control_plane.reason }}"
"""

RETURN = r"""
_raw:
  description: One selection.
  type: list
  elements: dict
  contains:
    source:
      description: C(pegasus) or C(mac).
      type: str
    reason:
      description: Why this control plane, in a sentence (and why Pegasus was skipped, in C(auto) mode).
      type: str
    endpoints:
      description: The chosen endpoints document (schema 1), with C(services.{postgres,redis,s3}.{host,port}).
      type: dict
    probes:
      description: The probe results, when O(probe) is on.
      type: list
      elements: dict
"""


from functools import partial

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

try:
    from han_worker.fields import decode_json
    from han_worker.selection.endpoints import EndpointsError, mac_endpoints, parse_endpoints
    from han_worker.selection.policy import select
    from han_worker.selection.probes import tcp_probe
except ImportError as import_error:
    HAN_WORKER_IMPORT_ERROR = import_error
else:
    HAN_WORKER_IMPORT_ERROR = None


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if HAN_WORKER_IMPORT_ERROR is not None:
            raise AnsibleError(
                "han.infra.control_plane needs the han_worker package on the controller "
                f"({HAN_WORKER_IMPORT_ERROR}): run 'pip install -e .' in the han-infra checkout, "
                "or 'make venv' and use .venv/bin/ansible-playbook"
            )
        self.set_options(var_options=variables, direct=kwargs)
        try:
            selection = self._select().to_dict()
        except (EndpointsError, ValueError) as error:
            raise AnsibleError(f"control plane ({self.get_option('mode')} mode): {error}") from error
        return [selection]

    def _select(self):
        mac_host = self.get_option("mac_host")
        macs = [mac_endpoints(mac_host, self.get_option("mac_ports"))] if mac_host else []
        probe = (
            partial(tcp_probe, timeout=self.get_option("probe_timeout")) if self.get_option("probe") else None
        )
        return select(
            self.get_option("mode"),
            pegasus=self._pegasus(),
            mac=macs,
            probe=probe,
            job_alive=self.get_option("pegasus_job_alive"),
        )

    def _pegasus(self):
        document = self.get_option("pegasus_endpoints")
        if document is None or document == "":
            reason = self.get_option("pegasus_endpoints_error") or "no Pegasus endpoints document was given"
            return EndpointsError(reason.strip())
        if isinstance(document, str):
            try:
                document = decode_json(document, "Pegasus endpoints", EndpointsError)
            except EndpointsError as error:
                return error
        if not isinstance(document, dict):
            return EndpointsError(f"Pegasus endpoints: must be an object, not {type(document).__name__}")
        try:
            return parse_endpoints(document, "Pegasus endpoints")
        except EndpointsError as error:
            return error
