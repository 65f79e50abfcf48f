# Copyright (c) 2026 han-infra developers
# MIT License (see https://opensource.org/licenses/MIT)
# ruff: noqa: E402 - ansible-test wants the imports below DOCUMENTATION, EXAMPLES and RETURN.

from __future__ import annotations

DOCUMENTATION = r"""
name: winrm_error
author: han-infra developers (@han-infra)
short_description: Turn a failed WinRM connection into one message that says what to check
description:
  - Reads the error that Ansible's C(winrm) connection plugin (over pywinrm) reports when a task such as
    M(ansible.windows.win_ping) cannot reach a Windows host, and returns one message naming the host, the
    WinRM endpoint and the settings to check.
  - "Four kinds are told apart: the host does not answer (refused, timed out, name not resolved), the
    credentials were refused (HTTP 401, access denied), the server does not speak WinRM over the configured
    scheme and transport (TLS to a plain HTTP listener, plain HTTP to an HTTPS one, not HTTP at all, not a
    WinRM listener), and the listener's TLS certificate failed verification. Anything else is passed on
    with the general settings to check."
options:
  _input:
    description: The task result (its C(msg) is read) or the error message itself.
    type: raw
    required: true
  host:
    description: The inventory host name, for the message.
    type: str
    required: true
  address:
    description: The address Ansible connects to (C(ansible_host)).
    type: str
    required: true
  port:
    description: The WinRM port (C(ansible_port)).
    type: int
    required: true
  scheme:
    description: C(http) or C(https) (C(ansible_winrm_scheme), or what Ansible derives from the port).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Ping the host over WinRM, keeping any connection error.
  ansible.windows.win_ping:
  ignore_unreachable: true
  ignore_errors: true
  register: ping

- name: Fail with one clear message when WinRM did not work.
  ansible.builtin.fail:
    msg: >-
      {{ ping | han.infra.winrm_error(host=inventory_hostname, address=ansible_host, port=ansible_port,
                                      scheme=ansible_winrm_scheme) }}
  when: ping is unreachable or ping is failed
"""

RETURN = r"""
_value:
  description: The message, starting with the host name.
  type: str
"""

import re
from collections.abc import Mapping

KINDS = ("unreachable", "authentication", "transport", "certificate", "unknown")

# (kind, pattern, the reason shown in the message). Checked in order: the first match decides.
_RULES = (
    ("certificate", r"certificate verify failed: ([^(]+?) \(_ssl", None),
    ("certificate", r"CERTIFICATE_VERIFY_FAILED|SSLCertVerificationError|doesn't match", "not trusted"),
    ("authentication", r"credentials were rejected|Code 401\b", "HTTP 401"),
    ("authentication", r"Access is denied", "access denied: not an administrator?"),
    ("authentication", r"auth method \w+ requires a (username|password)", "no user or password given"),
    ("authentication", r"Kerberos auth failure|kinit", "Kerberos refused the ticket"),
    ("unreachable", r"Connection refused", "connection refused"),
    (
        "unreachable",
        r"Failed to resolve|Name or service not known|getaddrinfo failed|nodename nor servname",
        "the name does not resolve",
    ),
    ("unreachable", r"No route to host|Network is unreachable", "no route to the host"),
    ("unreachable", r"Read timed out", "connected, but no answer in time"),
    ("unreachable", r"timed out", "timed out"),
    (
        "transport",
        r"WRONG_VERSION_NUMBER|wrong version number|record layer failure",
        "TLS sent to a plain HTTP listener",
    ),
    (
        "transport",
        r"Connection reset by peer|RemoteDisconnected|EOF occurred in violation",
        "the server hung up: plain HTTP sent to an HTTPS listener?",
    ),
    ("transport", r"BadStatusLine|Connection aborted", "the answer is not HTTP"),
    ("transport", r"Code (404|405)\b", "no WinRM at this URL: another service on the port, or a wrong path"),
    (
        "transport",
        r"SSLError|Code 400\b|Code 415\b|message encryption|not well-formed|ParseError",
        "the server does not speak this WinRM transport",
    ),
)
_TRANSPORT_PREFIX = re.compile(
    r"^(?:Task failed: )?(ssl|plaintext|basic|ntlm|kerberos|credssp|certificate): "
)


def error_text(result: object) -> str:
    """The error message of a task result, or the text itself."""
    if isinstance(result, Mapping):
        return str(result.get("msg", ""))
    return str(result)


def classify(text: str) -> tuple[str, str]:
    """``(kind, reason)`` of a WinRM error message; kind is one of :data:`KINDS`."""
    for kind, pattern, reason in _RULES:
        match = re.search(pattern, text, re.IGNORECASE)
        if match:
            return kind, reason or match.group(1).strip()
    return "unknown", ""


def transport_of(text: str) -> str:
    """The transport Ansible tried, from the ``TRANSPORT: `` it puts first (ssl, plaintext: basic)."""
    match = _TRANSPORT_PREFIX.match(text)
    if not match:
        return "the configured transport"
    return {"ssl": "basic", "plaintext": "basic"}.get(match.group(1), match.group(1))


def explain(result: object, host: str, address: str, port: int, scheme: str) -> str:
    """One message: the host, the endpoint, what went wrong and the settings to check."""
    text = error_text(result).strip()
    kind, reason = classify(text)
    endpoint = f"{scheme}://{address}:{port}/wsman"
    transport = transport_of(text)
    checks = {
        "unreachable": (
            f"{host}: WinRM at {endpoint} does not answer ({reason}). Check that the host is up, that "
            "ansible_host and ansible_port point at it (5985 for http, 5986 for https), that the WinRM "
            "service has a listener on that port (winrm enumerate winrm/config/listener) and that the "
            "host's firewall lets the controller in."
        ),
        "authentication": (
            f"{host}: WinRM at {endpoint} refused the login ({reason}, transport {transport}). Check "
            "ansible_user and ansible_password (a local account as .\\user, a domain account as "
            "user@DOMAIN), that the account is an administrator, and that the host accepts this "
            "transport (winrm get winrm/config/service/auth; basic needs Basic=true, ntlm Negotiate=true)."
        ),
        "transport": (
            f"{host}: the server at {endpoint} does not speak WinRM over {scheme} with transport "
            f"{transport} ({reason}). Check that ansible_winrm_scheme matches the listener (http on 5985, "
            "https on 5986: winrm enumerate winrm/config/listener), that ansible_winrm_transport is enabled "
            "on the host (winrm get winrm/config/service/auth), and that ansible_port is WinRM's port."
        ),
        "certificate": (
            f"{host}: the TLS certificate of the WinRM listener at {endpoint} failed verification "
            f"({reason}). Check that the certificate names ansible_host and that the controller trusts "
            "its CA: set ansible_winrm_ca_trust_path to the CA's bundle. "
            "ansible_winrm_server_cert_validation=ignore turns the check off; use it only on a lab network."
        ),
    }
    return checks.get(kind) or (
        f"{host}: WinRM at {endpoint} failed: {text}. Check ansible_host, ansible_port, "
        "ansible_winrm_scheme, ansible_winrm_transport, ansible_user and ansible_password."
    )


class FilterModule:
    """han.infra.winrm_error."""

    def filters(self) -> dict[str, object]:
        return {"winrm_error": explain}
