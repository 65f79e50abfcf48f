"""What the checks read from the state directory: the endpoints, secrets and credentials documents.

Read leniently (a missing or broken file is ``None``, not an error) so that every other check still runs;
the checks that need a document report its absence as a row.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from han_worker.control_plane.layout import Layout
from han_worker.selection.tls import authority_bundle

MIN_SECRET_LENGTH = 6  # shorter values would match by chance; real secrets are >= 16 characters
_SECRET_KEY = re.compile(r"password|secret|ca_key", re.IGNORECASE)

Document = dict[str, object]


def read_json(path: Path) -> Document | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def field(document: Mapping[str, object] | None, section: str, key: str) -> str | None:
    """``document[section][key]`` when it is a string, else None."""
    if document is None:
        return None
    part = document.get(section)
    value = part.get(key) if isinstance(part, Mapping) else None
    return value if isinstance(value, str) else None


def published_services(endpoints: Mapping[str, object]) -> dict[str, tuple[str, int]]:
    """``{service: (host, port)}`` of the endpoints document's well-formed entries, and its ``metrics`` entry
    (the supervisor's own /metrics) as service ``metrics``."""
    services = endpoints.get("services")
    entries = dict(services) if isinstance(services, Mapping) else {}
    if "metrics" in endpoints:
        entries["metrics"] = endpoints["metrics"]
    found: dict[str, tuple[str, int]] = {}
    for name, entry in entries.items():
        if not isinstance(entry, Mapping):
            continue
        host, port = entry.get("host"), entry.get("port")
        if isinstance(host, str) and isinstance(port, int):
            found[str(name)] = (host, port)
    return found


def secret_values(documents: Mapping[str, object]) -> dict[str, str]:
    """``{"secrets.json redis.admin_password": value}`` for every password or secret key field.

    ``documents`` maps a file name to its decoded JSON; user names and bucket names are not secret.
    """
    found: dict[str, str] = {}

    def walk(origin: str, prefix: str, node: object) -> None:
        if not isinstance(node, Mapping):
            return
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, str) and _SECRET_KEY.search(str(key)):
                if len(value) >= MIN_SECRET_LENGTH:
                    found[f"{origin} {name}"] = value
            else:
                walk(origin, name, value)

    for origin, document in documents.items():
        walk(origin, "", document)
    return found


@dataclass(frozen=True)
class StateDocuments:
    """The state directory's documents as the checks see them, and the secret values they hold."""

    layout: Layout
    endpoints: Document | None
    secrets_doc: Document | None
    credentials_doc: Document | None
    secrets: dict[str, str]  # "<file> <field>" -> value; compared, never printed
    services: dict[str, tuple[str, int]]

    @classmethod
    def read(cls, layout: Layout) -> StateDocuments:
        endpoints = read_json(layout.endpoints_file)
        secrets_doc = read_json(layout.secrets_file)
        credentials_doc = read_json(layout.credentials_file)
        # A rotation in progress keeps the old secrets until it retires them: they must not leak either.
        named = {
            layout.secrets_file.name: secrets_doc,
            layout.previous_secrets_file.name: read_json(layout.previous_secrets_file),
            layout.credentials_file.name: credentials_doc,
        }
        documents = {name: document for name, document in named.items() if document is not None}
        return cls(
            layout=layout,
            endpoints=endpoints,
            secrets_doc=secrets_doc,
            credentials_doc=credentials_doc,
            secrets=secret_values(documents),
            services=published_services(endpoints or {}),
        )


def trusted_authority(state: StateDocuments) -> tuple[str, str]:
    """The certificate authorities the checks verify the servers with, and where they come from: the secrets
    file's and the one(s) published to the workers (during a rotation the servers still show the previous
    authority's certificates, which only the published file names). Empty when neither file holds one (the
    attempts then cannot verify)."""
    documents = ((state.secrets_doc, "secrets.json"), (state.credentials_doc, "credentials.json"))
    found = [(pem, origin) for document, origin in documents if (pem := field(document, "tls", "ca_cert"))]
    if not found:
        return "", "the state directory (neither secrets.json nor credentials.json)"
    return authority_bundle(*(pem for pem, _origin in found)), " and ".join(origin for _pem, origin in found)
