"""``han-worker harden-check``: verify a running control plane's hardening on its own host.

Runs as the control plane's user, where the control plane runs (on Pegasus: inside the Slurm job's
allocation), and prints one row per check: ``{check, target, result, detail}`` with ``result`` one of
``pass``, ``fail`` or ``warn``. Exit 0 when nothing failed, 1 when a check failed, 2 on bad input.

What it checks, all read-only:

- ``listen``: every TCP/UDP port of the supervisor's process tree (from ``ss``) binds the configured
  private address; SeaweedFS's internal ports on 127.0.0.1 are a warning (unauthenticated, reachable by
  other users of the node: known open work); 0.0.0.0 or ``::`` fails unless ``--allow-any-address``.
- ``auth``: no credentials and the default ``minioadmin`` are refused by Redis, PostgreSQL and S3.
- ``mode``: the state directory, its data, log and run directories, the endpoints, credentials and
  secrets files are ours and private; the env is not group- or world-writable.
- ``leak``: no secret value appears in the user's process list, the supervisor's environment, the
  state directory's logs and non-secret files, or (Slurm) the job script, job record and job name.
- ``pg-hba``, ``redis-config``, ``s3-config``, ``secrets``: no weak authentication is configured.

Secret values are compared here and never printed: a row names the secret's field, not its value.
This file also runs as a script (``python hardening.py --state-dir ...``), which is how the
``han.infra.harden_check`` role ships it to hosts whose env predates it.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis
import urllib3
from minio import Minio
from minio.error import S3Error
from psycopg.conninfo import make_conninfo

log = logging.getLogger(__name__)

PASS, FAIL, WARN = "pass", "fail", "warn"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_STATE_DIR = "~/.han/control-plane"
DEFAULT_ENV_DIR = "~/.han/env"
PREVIOUS_SECRETS = "secrets.previous.json"  # see han_worker/control_plane/rotation.py
DEFAULT_USER = "minioadmin"  # MinIO's default user and password, named by the runbook
DEFAULT_PASSWORD = "minioadmin"  # noqa: S105 (the default we try, and expect refused)
# Passwords nobody may use; the same list the supervisor refuses (han_worker.control_plane.admin_secrets).
KNOWN_DEFAULT_PASSWORDS = ("minioadmin", "postgres", "password", "admin", "redis", "changeme", "secret")
WEAK_HBA_METHODS = frozenset({"trust", "md5", "password"})
MIN_SECRET_LENGTH = 6  # shorter values would match by chance; real secrets are >= 16 characters
INTERNAL_ADDRESS = ipaddress.ip_address("127.0.0.1")
_SECRET_KEY = re.compile(r"password|secret", re.IGNORECASE)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class HardeningInputError(ValueError):
    """An input of the check (a flag or a file it needs) is unusable; the message names it."""


@dataclass(frozen=True)
class Row:
    check: str
    target: str
    result: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "target": self.target, "result": self.result, "detail": self.detail}


def has_failures(rows: Iterable[Row]) -> bool:
    return any(row.result == FAIL for row in rows)


def format_table(rows: Sequence[Row]) -> str:
    header = Row("check", "target", "result", "detail")
    widths = [
        max(len(getattr(row, name)) for row in (header, *rows)) for name in ("check", "target", "result")
    ]
    return "\n".join(
        f"{row.check:<{widths[0]}} | {row.target:<{widths[1]}} | {row.result:<{widths[2]}} | {row.detail}"
        for row in (header, *rows)
    )


# -- listening sockets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    protocol: str
    address: str  # as ss prints it, without brackets or %interface: 0.0.0.0, ::, *, 127.0.0.1
    port: int
    pids: tuple[int, ...]
    programs: tuple[str, ...]

    @property
    def endpoint(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


_SS_PROCESS = re.compile(r'\("([^"]*)",pid=(\d+),fd=\d+\)')


def parse_ss(text: str) -> list[Listener]:
    """Listeners from ``ss -H -l -n -p -t -u`` (with or without its header line and Netid column)."""
    listeners: list[Listener] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] in {"Netid", "State"}:
            continue
        protocol = "tcp"
        if fields[0] in {"tcp", "udp", "raw", "u_str", "u_dgr", "u_seq"}:
            protocol, fields = fields[0], fields[1:]
        if protocol not in {"tcp", "udp"} or len(fields) < 4:
            continue
        local = fields[3]  # State Recv-Q Send-Q Local Peer [Process]
        host, _colon, port_text = local.rpartition(":")
        if not port_text.isdigit():
            continue  # a wildcard port (*) is not a listener of ours
        host = host.removeprefix("[").removesuffix("]").split("%")[0]
        processes = _SS_PROCESS.findall(line)
        listeners.append(
            Listener(
                protocol=protocol,
                address=host,
                port=int(port_text),
                pids=tuple(sorted({int(pid) for _name, pid in processes})),
                programs=tuple(sorted({name for name, _pid in processes})),
            )
        )
    return listeners


@dataclass(frozen=True)
class AddressPolicy:
    """The private address(es) the control plane may bind, as the inventory configures them."""

    addresses: frozenset[IPAddress] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    allow_any: bool = False

    def is_private(self, address: IPAddress) -> bool:
        return address in self.addresses or any(
            address.version == network.version and address in network for network in self.networks
        )

    def describe(self) -> str:
        parts = [str(a) for a in sorted(self.addresses, key=str)] + [str(n) for n in self.networks]
        return ", ".join(parts) or "nothing configured"


def make_policy(addresses: Sequence[str], networks: Sequence[str], allow_any: bool) -> AddressPolicy:
    try:
        parsed_addresses = frozenset(ipaddress.ip_address(text) for text in addresses)
    except ValueError as exc:
        raise HardeningInputError(f"--bind-address: {exc}") from None
    try:
        parsed_networks = tuple(ipaddress.ip_network(text, strict=False) for text in networks)
    except ValueError as exc:
        raise HardeningInputError(f"--bind-network: {exc}") from None
    if not parsed_addresses and not parsed_networks:
        raise HardeningInputError("give the configured private address: --bind-address or --bind-network")
    if any(a.is_unspecified for a in parsed_addresses) or any(n.prefixlen == 0 for n in parsed_networks):
        raise HardeningInputError(
            "--bind-address/--bind-network: every interface is not a private address; "
            "use --allow-any-address to accept a bind to 0.0.0.0 or ::"
        )
    return AddressPolicy(parsed_addresses, parsed_networks, allow_any)


def _ip(text: str) -> IPAddress | None:
    if text == "*":
        return ipaddress.ip_address("::")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def listener_rows(
    listeners: Sequence[Listener], published: Mapping[int, str], policy: AddressPolicy
) -> list[Row]:
    """Classify the control plane's listeners; ``published`` maps the endpoints file's ports to services."""
    rows: list[Row] = []
    internal: list[Listener] = []
    for listener in sorted(listeners, key=lambda item: (item.port, item.address)):
        address = _ip(listener.address)
        what = published.get(listener.port)
        who = ",".join(listener.programs) or "?"
        label = f"{what} ({who})" if what else f"{who}, not in the endpoints file"
        target = f"{listener.protocol} {listener.endpoint}"
        if address is None:
            rows.append(Row("listen", target, FAIL, f"{label}: unparseable address {listener.address!r}"))
        elif address.is_unspecified:
            if policy.allow_any:
                rows.append(
                    Row(
                        "listen",
                        target,
                        WARN,
                        f"{label}: every interface, allowed (harden_check_allow_any_address)",
                    )
                )
            else:
                rows.append(
                    Row(
                        "listen",
                        target,
                        FAIL,
                        f"{label}: binds every interface, not the private address "
                        f"({policy.describe()}); set harden_check_allow_any_address only if that is meant",
                    )
                )
        elif policy.is_private(address):
            rows.append(Row("listen", target, PASS, f"{label}: private address"))
        elif address == INTERNAL_ADDRESS:
            internal.append(listener)
        else:
            rows.append(
                Row(
                    "listen",
                    target,
                    FAIL,
                    f"{label}: {address} is neither the private address ({policy.describe()}) nor 127.0.0.1",
                )
            )
    if internal:
        ports = ", ".join(f"{item.port} ({','.join(item.programs) or '?'})" for item in internal)
        rows.append(
            Row(
                "listen",
                "tcp 127.0.0.1 (internal)",
                WARN,
                f"internal, unauthenticated, reachable by other users of the node: {ports}",
            )
        )
    return rows


def process_tree(root: int, parents: Mapping[int, int]) -> set[int]:
    """``root`` and all its descendants, given each process's parent."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return tree


# -- secrets ------------------------------------------------------------------------------------------


def secret_values(documents: Mapping[str, object]) -> dict[str, str]:
    """``{"secrets.json redis.admin_password": value}`` for every password or secret key field.

    ``documents`` maps a file name to its decoded JSON; user names and bucket names are not secret.
    """
    found: dict[str, str] = {}

    def walk(origin: str, prefix: str, node: object) -> None:
        if isinstance(node, Mapping):
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


def find_leaks(data: bytes | str, secrets: Mapping[str, str]) -> list[str]:
    """Names of the secrets whose value occurs in ``data`` (never the values)."""
    blob = data.encode(errors="replace") if isinstance(data, str) else data
    return sorted(name for name, value in secrets.items() if value.encode() in blob)


def scan_file_for_leaks(path: Path, secrets: Mapping[str, str], chunk_size: int = 1 << 20) -> list[str]:
    """Like :func:`find_leaks` on a file of any size, read in overlapping chunks."""
    overlap = max((len(value.encode()) for value in secrets.values()), default=1)
    found: set[str] = set()
    tail = b""
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            found.update(find_leaks(tail + chunk, secrets))
            tail = chunk[-overlap:]
    return sorted(found)


def leak_row(check_target: str, leaks: Sequence[str], clean_detail: str) -> Row:
    if leaks:
        return Row("leak", check_target, FAIL, "contains " + ", ".join(leaks))
    return Row("leak", check_target, PASS, clean_detail)


# -- configuration files ------------------------------------------------------------------------------


def weak_hba_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, method)`` of pg_hba.conf lines whose method is trust, md5 or password."""
    weak: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        if not fields or fields[0].startswith("include"):
            continue
        # local DATABASE USER METHOD [OPTIONS]; host* DATABASE USER ADDRESS [MASK] METHOD [OPTIONS]
        candidates = fields[3:] if fields[0] == "local" else fields[4:]
        method = next(
            (item for item in candidates if "=" not in item and "/" not in item and "." not in item), ""
        )
        if method.lower() in WEAK_HBA_METHODS:
            weak.append((number, method.lower()))
    return weak


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def acl_rows(acl_lines: Sequence[str], target: str, weak_passwords: Iterable[str] = ()) -> list[Row]:
    """Judge ``ACL LIST``: ``default`` disabled, no user without a password or with a known default one."""
    weak = {_sha256(password): password for password in (*KNOWN_DEFAULT_PASSWORDS, *weak_passwords)}
    rows: list[Row] = []
    default_seen = False
    for line in acl_lines:
        tokens = line.split()
        if len(tokens) < 3 or tokens[0] != "user":
            continue
        user, enabled = tokens[1], "on" in tokens[2:]
        hashes = {token[1:] for token in tokens[2:] if token.startswith("#")}
        if user == "default":
            default_seen = True
            rows.append(
                Row(
                    "redis-config",
                    f"{target} user default",
                    FAIL if enabled else PASS,
                    "enabled: clients need no user name" if enabled else "disabled (off)",
                )
            )
            if not enabled:
                continue
        if not enabled:
            continue
        if "nopass" in tokens:
            rows.append(
                Row("redis-config", f"{target} user {user}", FAIL, "enabled with nopass (any password)")
            )
        for digest in hashes & weak.keys():
            rows.append(
                Row(
                    "redis-config",
                    f"{target} user {user}",
                    FAIL,
                    f"password is the known default {weak[digest]!r}",
                )
            )
    if not default_seen:
        rows.append(Row("redis-config", f"{target} user default", FAIL, "not in ACL LIST"))
    return rows


def weak_secret_fields(secrets: Mapping[str, str], min_length: int = 16) -> list[str]:
    """Names of secret fields that hold a known default or are shorter than ``min_length``."""
    weak = []
    for name, value in sorted(secrets.items()):
        if value.lower() in KNOWN_DEFAULT_PASSWORDS:
            weak.append(f"{name} is a known default")
        elif len(value) < min_length:
            weak.append(f"{name} has {len(value)} characters (< {min_length})")
    return weak


# -- file modes ---------------------------------------------------------------------------------------


def mode_row(path: Path, uid: int, *, private: bool, directory: bool | None = None) -> Row:
    """``private``: no group or other bits at all; else: not group- or world-writable."""
    target = str(path)
    try:
        info = path.lstat()
    except FileNotFoundError:
        return Row("mode", target, FAIL, "does not exist")
    except OSError as exc:
        return Row("mode", target, FAIL, f"cannot be examined: {exc.strerror}")
    mode = stat.S_IMODE(info.st_mode)
    problems = []
    if stat.S_ISLNK(info.st_mode):
        problems.append("is a symbolic link")
    elif directory is not None and stat.S_ISDIR(info.st_mode) != directory:
        problems.append("is not a directory" if directory else "is not a regular file")
    if info.st_uid != uid:
        problems.append(f"owned by uid {info.st_uid}, not {uid}")
    if private and mode & 0o077:
        problems.append(f"mode {mode:04o} gives group/others access (want {'0700' if directory else '0600'})")
    if not private and mode & 0o022:
        problems.append(f"mode {mode:04o} is group- or world-writable")
    if problems:
        return Row("mode", target, FAIL, "; ".join(problems))
    return Row("mode", target, PASS, f"mode {mode:04o}, ours")


def writable_by_others(root: Path, limit: int = 5) -> tuple[int, list[str]]:
    """How many entries under ``root`` (not following links) are group/world-writable, and the first few."""
    count, examples = 0, list[str]()
    for directory, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = Path(directory) / name
            try:
                info = path.lstat()
            except OSError:
                continue
            if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o022:
                count += 1
                if len(examples) < limit:
                    examples.append(f"{path} ({stat.S_IMODE(info.st_mode):04o})")
    return count, examples


# -- connection attempts that must be refused ---------------------------------------------------------

REFUSED, ACCEPTED, UNREACHABLE = "refused", "accepted", "unreachable"


@dataclass(frozen=True)
class Attempt:
    service: str
    endpoint: str
    credentials: str  # e.g. "no credentials", "minioadmin/minioadmin"
    outcome: str
    detail: str

    def row(self) -> Row:
        target = f"{self.service} {self.endpoint} {self.credentials}"
        if self.outcome == REFUSED:
            return Row("auth", target, PASS, f"refused: {self.detail}")
        if self.outcome == ACCEPTED:
            return Row("auth", target, FAIL, f"ACCEPTED: {self.detail}")
        return Row("auth", target, FAIL, f"cannot verify, no answer: {self.detail}")


def _resp(*parts: str) -> bytes:
    encoded = [part.encode() for part in parts]
    return f"*{len(encoded)}\r\n".encode() + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded)


def classify_redis_reply(reply: bytes) -> tuple[str, str]:
    text = reply.decode(errors="replace").strip()
    first = text.splitlines()[0] if text else "(no reply)"
    if first.startswith("+"):
        return ACCEPTED, first[1:]
    if first.startswith(("-NOAUTH", "-WRONGPASS", "-NOPERM")):
        return REFUSED, first[1:]
    if first.startswith("-"):
        return REFUSED, first[1:]  # any error before authentication is a refusal, with its text
    return UNREACHABLE, f"unexpected reply {first[:60]!r}"


def redis_attempt(
    host: str, port: int, user: str | None, password: str | None, timeout: float
) -> tuple[str, str]:
    """Speak RESP directly: ``PING`` without credentials, else ``AUTH [user] password`` then ``PING``."""
    command = _resp("PING") if password is None else _resp("AUTH", *([user] if user else []), password)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(command)
            reply = sock.recv(4096)
    except OSError as exc:
        return UNREACHABLE, str(exc)
    return classify_redis_reply(reply)


_PG_REFUSED = (
    "password authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "authentication failed",
    "is not permitted to log in",
)


def classify_postgres_error(message: str) -> tuple[str, str]:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    first = first.rpartition(" failed: ")[2].replace("FATAL:  ", "")  # libpq's "connection to ... failed: "
    lowered = message.lower()
    if any(marker in lowered for marker in _PG_REFUSED):
        return REFUSED, first
    if "database" in lowered and "does not exist" in lowered:
        return ACCEPTED, f"authenticated, then: {first}"
    return UNREACHABLE, first


def postgres_attempt(
    host: str, port: int, user: str, password: str | None, timeout: float
) -> tuple[str, str]:
    # No password file and no GSS/SSL detours: the attempt is exactly "this user, this password or none".
    options = {"passfile": "/dev/null/none", "sslmode": "disable", "gssencmode": "disable"}
    if password is not None:
        options["password"] = password
    conninfo = make_conninfo(
        host=host, port=port, user=user, dbname="postgres", connect_timeout=max(1, round(timeout)), **options
    )
    try:
        with psycopg.connect(conninfo):
            return ACCEPTED, f"logged in as {user}"
    except psycopg.Error as exc:
        return classify_postgres_error(str(exc))


def classify_http_status(status: int) -> tuple[str, str]:
    if 200 <= status < 300:
        return ACCEPTED, f"HTTP {status}"
    if status in (401, 403):
        return REFUSED, f"HTTP {status}"
    return REFUSED, f"HTTP {status} (no access granted)"


def s3_anonymous_attempt(host: str, port: int, path: str, timeout: float) -> tuple[str, str]:
    url = f"http://{host}:{port}{path}" if ":" not in host else f"http://[{host}]:{port}{path}"
    request = urllib.request.Request(url, method="GET")  # noqa: S310 (http to our own endpoint)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return classify_http_status(int(response.status))
    except urllib.error.HTTPError as exc:
        body = exc.read(2000).decode(errors="replace")
        code = re.search(r"<Code>([^<]+)</Code>", body)
        outcome, detail = classify_http_status(exc.code)
        return outcome, f"{detail} {code.group(1)}" if code else detail
    except (urllib.error.URLError, OSError) as exc:
        return UNREACHABLE, str(exc)


def s3_signed_attempt(
    endpoint: tuple[str, int], keys: tuple[str, str], bucket: str, timeout: float
) -> tuple[str, str]:
    """List ``bucket`` signed with ``keys`` (access key, secret key)."""
    (host, port), (access_key, secret_key) = endpoint, keys
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=urllib3.Retry(0)
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    client = Minio(address, access_key=access_key, secret_key=secret_key, secure=False, http_client=http)
    try:
        next(iter(client.list_objects(bucket)), None)
    except S3Error as exc:
        return REFUSED, str(exc.code)
    except urllib3.exceptions.HTTPError as exc:
        return UNREACHABLE, type(exc).__name__
    return ACCEPTED, f"listed bucket {bucket}"


# -- the live checks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckConfig:
    state_dir: Path
    env_dir: Path
    policy: AddressPolicy
    timeout: float = 5.0
    uid: int = field(default_factory=os.getuid)


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    uid: int
    cmdline: bytes


def list_processes(proc: Path = Path("/proc")) -> dict[int, Process]:
    processes: dict[int, Process] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        ppid = re.search(r"^PPid:\s+(\d+)", status, re.MULTILINE)
        uid = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
        if ppid and uid:
            processes[int(entry.name)] = Process(
                int(entry.name), int(ppid.group(1)), int(uid.group(1)), cmdline
            )
    return processes


def supervisor_pid(state_dir: Path) -> int | None:
    """The pid in supervisor.lock while a supervisor holds its lock (as han-control-plane status reads it)."""
    lock = state_dir / "supervisor.lock"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = lock.read_text().strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _services(endpoints: Mapping[str, object]) -> dict[str, tuple[str, int]]:
    services = endpoints.get("services")
    found: dict[str, tuple[str, int]] = {}
    if isinstance(services, Mapping):
        for name, entry in services.items():
            if (
                isinstance(entry, Mapping)
                and isinstance(entry.get("host"), str)
                and isinstance(entry.get("port"), int)
            ):
                found[str(name)] = (str(entry["host"]), int(entry["port"]))
    return found


def _field(document: Mapping[str, object] | None, section: str, key: str) -> str | None:
    if document is None:
        return None
    part = document.get(section)
    value = part.get(key) if isinstance(part, Mapping) else None
    return value if isinstance(value, str) else None


def _where() -> str:
    """Where the checks run: a Slurm step sees the node of the job, a login node would not."""
    job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")
    inside = f" inside Slurm job {job} (step {step})" if job else ""
    return f"on {socket.gethostname()}{inside}"


def _names(*names: str | None) -> set[str]:
    return {name for name in names if name}


class Checker:
    """Runs every check against one state directory; each section turns surprises into a failed row."""

    def __init__(self, config: CheckConfig) -> None:
        self.config = config
        self.layout_root = config.state_dir
        self.endpoints = _read_json(config.state_dir / "endpoints.json")
        self.secrets_doc = _read_json(config.state_dir / "secrets.json")
        self.credentials_doc = _read_json(config.state_dir / "credentials.json")
        # A rotation in progress keeps the old secrets here until it retires them: they must not leak either.
        previous_doc = _read_json(config.state_dir / PREVIOUS_SECRETS)
        documents: dict[str, object] = {}
        if self.secrets_doc is not None:
            documents["secrets.json"] = self.secrets_doc
        if previous_doc is not None:
            documents[PREVIOUS_SECRETS] = previous_doc
        if self.credentials_doc is not None:
            documents["credentials.json"] = self.credentials_doc
        self.secrets = secret_values(documents)
        self.services = _services(self.endpoints or {})
        self.processes: dict[int, Process] = {}
        self.supervisor: int | None = None

    def run(self) -> list[Row]:
        rows: list[Row] = []
        for section in (
            self.control_plane,
            self.files,
            self.listening,
            self.authentication,
            self.redis_config,
            self.postgres_config,
            self.s3_config,
            self.leaks,
            self.slurm,
        ):
            try:
                rows.extend(section())
            except Exception as exc:  # a check that breaks must show up as a failure, not stop the others
                log.debug("check %s failed", section.__name__, exc_info=True)
                rows.append(
                    Row(section.__name__, str(self.layout_root), FAIL, f"check broke: {type(exc).__name__}")
                )
        return rows

    # each section ------------------------------------------------------------------------------------

    def control_plane(self) -> list[Row]:
        rows = []
        target = str(self.layout_root / "endpoints.json")
        if self.endpoints is None:
            rows.append(Row("control-plane", target, FAIL, "missing or not JSON: nothing to check against"))
        elif self.endpoints.get("stale") is not False:
            rows.append(Row("control-plane", target, FAIL, "stale: the control plane is not running"))
        else:
            names = ", ".join(f"{name} {host}:{port}" for name, (host, port) in sorted(self.services.items()))
            rows.append(Row("control-plane", target, PASS, f"published: {names}; checked {_where()}"))
        for name, (host, _port) in sorted(self.services.items()):
            address = _ip(host)
            if address is None or not self.config.policy.is_private(address):
                rows.append(
                    Row(
                        "listen",
                        f"{name} {host} (endpoints file)",
                        FAIL,
                        f"published address is not the private address ({self.config.policy.describe()})",
                    )
                )
        self.processes = list_processes()
        self.supervisor = supervisor_pid(self.layout_root)
        if self.supervisor is None or self.supervisor not in self.processes:
            where = (
                "not running"
                if self.supervisor is None
                else f"pid {self.supervisor} not visible on this host"
            )
            rows.append(
                Row("control-plane", str(self.layout_root / "supervisor.lock"), FAIL, f"supervisor {where}")
            )
        return rows

    def files(self) -> list[Row]:
        root, uid = self.layout_root, self.config.uid
        rows = [mode_row(root, uid, private=True, directory=True)]
        for name in ("endpoints.json", "credentials.json", "secrets.json"):
            rows.append(mode_row(root / name, uid, private=True, directory=False))
        if (root / PREVIOUS_SECRETS).exists():
            rows.append(mode_row(root / PREVIOUS_SECRETS, uid, private=True, directory=False))
        for directory in (root / "data", root / "logs", root / "run"):
            if directory.exists():
                rows.append(mode_row(directory, uid, private=True, directory=True))
        data = root / "data"
        if data.is_dir():
            rows.extend(
                mode_row(child, uid, private=True, directory=True)
                for child in sorted(data.iterdir())
                if child.is_dir() and not child.is_symlink()
            )
        env = self.config.env_dir
        resolved = env.resolve()
        rows.append(mode_row(resolved, uid, private=False, directory=True))
        if resolved.is_dir():
            count, examples = writable_by_others(resolved)
            rows.append(
                Row(
                    "mode",
                    f"{env} (tree)",
                    FAIL if count else PASS,
                    f"{count} group/world-writable entries, e.g. {'; '.join(examples)}"
                    if count
                    else "nothing group- or world-writable",
                )
            )
        return rows

    def _tree(self) -> set[int]:
        if self.supervisor is None or self.supervisor not in self.processes:
            return set()
        return process_tree(self.supervisor, {pid: p.ppid for pid, p in self.processes.items()})

    def listening(self) -> list[Row]:
        tree = self._tree()
        if not tree:
            return [
                Row(
                    "listen", str(self.layout_root), FAIL, "cannot verify: the supervisor is not running here"
                )
            ]
        result = subprocess.run(
            ["ss", "-H", "-l", "-n", "-p", "-t", "-u"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            return [
                Row(
                    "listen",
                    "ss",
                    FAIL,
                    f"cannot verify: ss exited {result.returncode}: {result.stderr.strip()}",
                )
            ]
        ours = [item for item in parse_ss(result.stdout) if set(item.pids) & tree]
        published = {port: name for name, (_host, port) in self.services.items()}
        rows = listener_rows(ours, published, self.config.policy)
        missing = sorted(set(published) - {item.port for item in ours})
        if missing:
            rows.append(
                Row(
                    "listen",
                    str(self.layout_root),
                    FAIL,
                    f"published ports with no listener of the supervisor: {missing}",
                )
            )
        return rows

    def authentication(self) -> list[Row]:
        timeout = self.config.timeout
        attempts: list[Attempt] = []
        if "redis" in self.services:
            host, port = self.services["redis"]
            endpoint = f"{host}:{port}"
            known = _names(
                _field(self.secrets_doc, "redis", "admin_user"), _field(self.credentials_doc, "redis", "user")
            )
            users: set[str | None] = {None, "default", DEFAULT_USER, *known}
            attempts.append(
                Attempt("redis", endpoint, "no credentials", *redis_attempt(host, port, None, None, timeout))
            )
            for user in sorted(users, key=lambda name: name or ""):
                label = f"{user or '(AUTH password only)'}/{DEFAULT_PASSWORD}"
                outcome = redis_attempt(host, port, user, DEFAULT_PASSWORD, timeout)
                attempts.append(Attempt("redis", endpoint, label, *outcome))
        if "postgres" in self.services:
            host, port = self.services["postgres"]
            endpoint = f"{host}:{port}"
            pg_users = {"postgres", DEFAULT_USER} | _names(
                _field(self.secrets_doc, "postgres", "superuser"),
                _field(self.credentials_doc, "postgres", "user"),
            )
            for user in sorted(pg_users):
                for password in (None, DEFAULT_PASSWORD):
                    label = f"{user}/{'no password' if password is None else password}"
                    attempts.append(
                        Attempt(
                            "postgres",
                            endpoint,
                            label,
                            *postgres_attempt(host, port, user, password, timeout),
                        )
                    )
        if "s3" in self.services:
            host, port = self.services["s3"]
            endpoint = f"{host}:{port}"
            bucket = _field(self.credentials_doc, "s3", "bucket") or "han-artifacts"
            for path, label in (
                ("/", "anonymous list buckets"),
                (f"/{bucket}?list-type=2", f"anonymous list {bucket}"),
                (f"/{bucket}/.han-ready-probe", f"anonymous GET {bucket}/object"),
            ):
                attempts.append(
                    Attempt("s3", endpoint, label, *s3_anonymous_attempt(host, port, path, timeout))
                )
            outcome = s3_signed_attempt((host, port), (DEFAULT_USER, DEFAULT_PASSWORD), bucket, timeout)
            attempts.append(
                Attempt("s3", endpoint, f"signed {DEFAULT_USER}/{DEFAULT_PASSWORD} list {bucket}", *outcome)
            )
        missing = sorted({"postgres", "redis", "s3"} - self.services.keys())
        rows = [attempt.row() for attempt in attempts]
        if missing:
            rows.append(
                Row("auth", str(self.layout_root), FAIL, f"no endpoint to test for {', '.join(missing)}")
            )
        return rows

    def redis_config(self) -> list[Row]:
        admin_user = _field(self.secrets_doc, "redis", "admin_user")
        admin_password = _field(self.secrets_doc, "redis", "admin_password")
        if "redis" not in self.services:
            return []
        host, port = self.services["redis"]
        target = f"redis {host}:{port}"
        if not admin_user or not admin_password:
            return [
                Row(
                    "redis-config", target, WARN, "admin credentials not readable: CONFIG and ACL not checked"
                )
            ]
        client = redis.Redis(
            host=host,
            port=port,
            username=admin_user,
            password=admin_password,
            socket_timeout=self.config.timeout,
            socket_connect_timeout=self.config.timeout,
            decode_responses=True,
        )
        try:
            protected = str(client.config_get("protected-mode").get("protected-mode", "?"))
            acl = [str(line) for line in client.acl_list()]
        except redis.RedisError as exc:
            return [
                Row("redis-config", target, FAIL, f"cannot verify as the admin user: {type(exc).__name__}")
            ]
        finally:
            client.close()
        rows = [
            Row(
                "redis-config",
                f"{target} protected-mode",
                PASS if protected == "yes" else FAIL,
                f"protected-mode {protected}",
            )
        ]
        found = acl_rows(acl, target)
        rows.extend(found)
        if not any(row.result == FAIL and "user default" not in row.target for row in found):
            rows.append(
                Row(
                    "redis-config",
                    f"{target} users",
                    PASS,
                    f"{len(acl)} ACL users, none without a password or with a known default",
                )
            )
        return rows

    def postgres_config(self) -> list[Row]:
        hba = self.layout_root / "data" / "postgres" / "pg_hba.conf"
        try:
            text = hba.read_text()
        except OSError as exc:
            return [Row("pg-hba", str(hba), FAIL, f"cannot verify: {exc.strerror}")]
        weak = weak_hba_lines(text)
        if weak:
            return [Row("pg-hba", str(hba), FAIL, "; ".join(f"line {n}: {method}" for n, method in weak))]
        return [Row("pg-hba", str(hba), PASS, "no trust, md5 or password lines")]

    def s3_config(self) -> list[Row]:
        identities = self.layout_root / "data" / "s3" / "s3-identities.json"
        document = _read_json(identities)
        if document is None:
            return [Row("s3-config", str(identities), WARN, "not readable: S3 identities not checked")]
        weak = []
        identities_list = document.get("identities")
        for identity in identities_list if isinstance(identities_list, list) else []:
            if not isinstance(identity, Mapping):
                continue
            for credential in identity.get("credentials", []) or []:
                if not isinstance(credential, Mapping):
                    continue
                if str(credential.get("accessKey", "")).lower() == DEFAULT_USER:
                    weak.append(f"identity {identity.get('name')}: access key {DEFAULT_USER}")
                if str(credential.get("secretKey", "")).lower() in KNOWN_DEFAULT_PASSWORDS:
                    weak.append(f"identity {identity.get('name')}: secret key is a known default")
            if not identity.get("credentials"):
                weak.append(f"identity {identity.get('name')}: no credentials (anonymous)")
        if weak:
            return [Row("s3-config", str(identities), FAIL, "; ".join(weak))]
        return [Row("s3-config", str(identities), PASS, "no default key, no anonymous identity")]

    def leaks(self) -> list[Row]:
        rows = []
        if self.secrets_doc is None:
            rows.append(
                Row(
                    "secrets",
                    str(self.layout_root / "secrets.json"),
                    WARN,
                    "not readable: leaks of admin secrets not checked",
                )
            )
        weak = weak_secret_fields(self.secrets)
        rows.append(
            Row(
                "secrets",
                str(self.layout_root),
                FAIL if weak else PASS,
                "; ".join(weak) if weak else f"{len(self.secrets)} secrets, none default or short",
            )
        )
        if not self.secrets:
            return rows
        mine = [p for p in self.processes.values() if p.uid == self.config.uid]
        found: set[str] = set()
        for process in mine:
            found.update(find_leaks(process.cmdline, self.secrets))
        rows.append(
            leak_row(
                f"process list (uid {self.config.uid})",
                sorted(found),
                f"{len(mine)} processes' arguments free of secrets",
            )
        )
        env_found: set[str] = set()
        unreadable = 0
        tree = self._tree()
        for pid in sorted(tree):
            try:
                env_found.update(find_leaks(Path(f"/proc/{pid}/environ").read_bytes(), self.secrets))
            except OSError:
                unreadable += 1
        if tree:
            rows.append(
                leak_row(
                    "control-plane environment",
                    sorted(env_found),
                    f"{len(tree) - unreadable} processes' environments free of secrets",
                )
            )
        files = [self.layout_root / name for name in ("endpoints.json", "control-plane.sbatch", "epoch")]
        logs = self.layout_root / "logs"
        if logs.is_dir():
            files.extend(sorted(path for path in logs.rglob("*") if path.is_file() and not path.is_symlink()))
        file_found: dict[str, list[str]] = {}
        scanned = 0
        for path in files:
            if not path.is_file():
                continue
            scanned += 1
            leaks = scan_file_for_leaks(path, self.secrets)
            if leaks:
                file_found[path.name] = leaks
        if file_found:
            rows.append(
                Row(
                    "leak",
                    f"{self.layout_root}/logs and files",
                    FAIL,
                    "; ".join(f"{name}: {', '.join(names)}" for name, names in sorted(file_found.items())),
                )
            )
        else:
            rows.append(
                Row("leak", f"{self.layout_root}/logs and files", PASS, f"{scanned} files free of secrets")
            )
        return rows

    def slurm(self) -> list[Row]:
        job = (self.endpoints or {}).get("slurm_job_id")
        if not isinstance(job, str) or not job.isdigit():
            return []
        rows = []
        target = f"Slurm job {job}"
        script = subprocess.run(
            ["scontrol", "write", "batch_script", job, "-"], capture_output=True, timeout=30, check=False
        )
        if script.returncode != 0:
            rows.append(
                Row(
                    "leak",
                    f"{target} batch script",
                    FAIL,
                    f"cannot verify: scontrol write batch_script exited {script.returncode}",
                )
            )
        else:
            rows.append(
                leak_row(
                    f"{target} batch script",
                    find_leaks(script.stdout, self.secrets),
                    "the script Slurm keeps is free of secrets",
                )
            )
        show = subprocess.run(
            ["scontrol", "show", "job", "-dd", job], capture_output=True, text=True, timeout=30, check=False
        )
        if show.returncode != 0:
            rows.append(
                Row(
                    "leak",
                    f"{target} record",
                    FAIL,
                    f"cannot verify: scontrol show job exited {show.returncode}",
                )
            )
            return rows
        name = re.search(r"JobName=(\S*)", show.stdout)
        rows.append(
            leak_row(
                f"{target} name",
                find_leaks(name.group(1) if name else "", self.secrets),
                f"job name {name.group(1) if name else '?'}",
            )
        )
        rows.append(
            leak_row(
                f"{target} record",
                find_leaks(show.stdout, self.secrets),
                "scontrol show job (command, work dir, comment) free of secrets",
            )
        )
        if self.supervisor is not None and self.supervisor in self.processes:
            try:
                environ = Path(f"/proc/{self.supervisor}/environ").read_bytes().split(b"\0")
            except OSError:
                environ = []
            if environ:
                export = next((item for item in environ if item.startswith(b"SLURM_EXPORT_ENV=")), b"")
                value = export.partition(b"=")[2].decode(errors="replace")
                rows.append(
                    Row(
                        "leak",
                        f"{target} exported environment",
                        PASS if value == "NONE" else FAIL,
                        "submitted with --export=NONE"
                        if value == "NONE"
                        else f"SLURM_EXPORT_ENV={value or 'unset'}: the submitter's environment was exported",
                    )
                )
        return rows


def run_checks(config: CheckConfig) -> list[Row]:
    return Checker(config).run()


# -- command line -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(DEFAULT_STATE_DIR),
        metavar="DIR",
        help=f"the control plane's state directory (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--env-dir",
        type=Path,
        default=Path(DEFAULT_ENV_DIR),
        metavar="DIR",
        help=f"the env its programs run from (default {DEFAULT_ENV_DIR})",
    )
    parser.add_argument(
        "--bind-address",
        action="append",
        default=[],
        metavar="IP",
        help="the configured private address (repeatable)",
    )
    parser.add_argument(
        "--bind-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="the configured private network (repeatable)",
    )
    parser.add_argument(
        "--allow-any-address",
        action="store_true",
        help="a bind to 0.0.0.0 or :: is a warning, not a failure (the operator asked for it)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="deadline of each connection attempt (default 5)",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    return parser


# --help's text: the module docstring's in plain words (argparse prints it as it is, markup included).
DESCRIPTION = (
    "Verify the hardening of the control plane running on this host (read-only; run it as the control "
    "plane's user). Prints one row per check with pass, fail or warn: listen (every port binds the private "
    "address), auth (no credentials and minioadmin are refused by Redis, PostgreSQL and S3), mode (state, "
    "data, endpoints, credentials and secrets files are ours and private), leak (no secret in the process "
    "list, the environment, logs or the Slurm job), pg-hba, redis-config, s3-config and secrets (no weak "
    "authentication). Secret values are compared, never printed. Exit 0 when nothing failed, 1 when a "
    "check failed, 2 on bad input."
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "harden-check",
        help="verify the hardening of the control plane running here (read-only)",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(handler=handle)
    return parser


def handle(args: argparse.Namespace) -> int:
    try:
        if not args.timeout > 0:
            raise HardeningInputError(f"--timeout: {args.timeout} is not a positive number of seconds")
        policy = make_policy(args.bind_address, args.bind_network, args.allow_any_address)
    except HardeningInputError as exc:
        print(f"han-worker harden-check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    state_dir = Path(args.state_dir).expanduser()
    if not state_dir.is_dir():
        print(f"han-worker harden-check: --state-dir: {state_dir} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    config = CheckConfig(
        state_dir=state_dir, env_dir=Path(args.env_dir).expanduser(), policy=policy, timeout=args.timeout
    )
    rows = run_checks(config)
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=1))
    else:
        print(format_table(rows))
    failed = [row for row in rows if row.result == FAIL]
    log.debug("%d checks, %d failed", len(rows), len(failed))
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry: ``python hardening.py ...`` (the role ships this file to the host)."""
    parser = add_arguments(argparse.ArgumentParser(prog="harden-check", description=DESCRIPTION))
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return handle(args)


if __name__ == "__main__":
    sys.exit(main())
