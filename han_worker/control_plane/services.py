"""The three services of the control plane: how each is prepared, started, bootstrapped and stopped.

Each runs in the foreground as a child of the supervisor (services that daemonize escape Slurm's
process tracking and survive ``scancel``). Secrets go into 0600 files or over the client protocol,
never into argv, where every user of the node could read them with ``ps``.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis
from minio import Minio
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

from han_worker.control_plane.admin_secrets import (
    ControlPlaneSecrets,
    serving_generation,
    trusted_authorities,
)
from han_worker.control_plane.binaries import ServerBinaries
from han_worker.control_plane.layout import Layout
from han_worker.control_plane.pki import Authority, write_private_file
from han_worker.control_plane.seaweed_security import SECURITY_DIR, write_security_config
from han_worker.private_files import write_private_json
from han_worker.selection.checks import redis_check, s3_client
from han_worker.selection.credentials import S3Credentials
from han_worker.selection.endpoints import ServiceEndpoint
from han_worker.selection.tls import postgres_tls

log = logging.getLogger(__name__)
# Where SeaweedFS's master, volume and filer listen: only weed's own components need them (each wants the
# control plane's client certificate, seaweed_security.py), so never on the control plane's published address.
SEAWEED_INTERNAL_ADDRESS = "127.0.0.1"


@dataclass
class Service:
    """What the supervisor needs to run one server."""

    name: str
    address: str
    port: int
    log_file: Path
    stop_signal: int = signal.SIGTERM
    # Seconds from the stop signal to SIGKILL when the server is known to wait for nothing useful after
    # them (the kill is then routine, not a warning); None: the supervisor's stop timeout.
    stop_grace: float | None = None
    cwd: Path | None = None
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None  # None: the supervisor's own environment
    secrets: ControlPlaneSecrets | None = None
    published: bool = True  # False: a helper process of a published service (stunnel), not in the endpoints
    # The secrets a rotation in progress replaces (secrets.previous.json): the running servers accept both
    # generations until the rotation retires the old one, so a server (re)started meanwhile does too.
    previous: ControlPlaneSecrets | None = None

    @property
    def endpoint(self) -> ServiceEndpoint:
        return ServiceEndpoint(self.address, self.port)

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port the server listens on (the published one first)."""
        return (self.port,)

    def use_secrets(self, secrets: ControlPlaneSecrets, previous: ControlPlaneSecrets | None) -> None:
        """Take the secrets file's current generation (a rotation may have changed it since the start)."""
        self.secrets, self.previous = secrets, previous

    def serving_authority(self) -> Authority:
        """The authority that issues this server's certificate (:func:`serving_generation`)."""
        assert self.secrets is not None
        return serving_generation(self.secrets, self.previous).authority()

    def trusted_authorities(self) -> str:
        """What the supervisor's own clients of this server verify it with (both authorities mid-rotation)."""
        assert self.secrets is not None
        return trusted_authorities(self.secrets, self.previous)

    def generations(self) -> list[ControlPlaneSecrets]:
        """The generations of secrets the server accepts: the current one, and the one a rotation replaces."""
        assert self.secrets is not None
        return [self.secrets, *([self.previous] if self.previous is not None else [])]

    def lock_files(self) -> list[Path]:
        """The lock, pid and socket files a killed server leaves that keep the next one from starting.

        Removed only once their owner is provably gone; never data."""
        return []

    def leftovers_in_use(self) -> str | None:
        """Why this host still uses what :meth:`lock_files` guard, or None (asked only on the same host)."""
        return None

    def prepare(self) -> None:
        """Create data and configuration on disk; safe to repeat."""

    def ready(self, timeout: float) -> None:
        """Raise unless the server answers its admin user."""
        raise NotImplementedError

    def bootstrap(self) -> None:
        """Create (or update) the worker's user, database or bucket; safe to repeat."""


@dataclass
class PostgresService(Service):
    bin_dir: Path = Path()
    data_dir: Path = Path()
    socket_dir: Path = Path()
    # ``previous`` here: an interrupted rotation may have recorded the new superuser password before it
    # could set it (see ready()).
    client_networks: tuple[str, ...] = ()

    def lock_files(self) -> list[Path]:
        # The socket lock files are PostgreSQL's too: one left by a killed server names its pid.
        return [self.data_dir / POSTMASTER_PID, *sorted(self.socket_dir.glob(".s.PGSQL.*"))]

    def leftovers_in_use(self) -> str | None:
        """PostgreSQL's own guard, kept when its postmaster.pid goes: a backend of a killed postmaster still
        attached to the shared memory segment that file names would share the data directory with the next
        postmaster (backends exit soon after their postmaster dies)."""
        segment = shared_memory_id(self.data_dir / POSTMASTER_PID)
        attached = None if segment is None else attached_processes(segment)
        if attached:
            return f"{attached} process(es) of the previous PostgreSQL still use its shared memory {segment}"
        return None

    def prepare(self) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._write_hba()
        cert_file, key_file = self._write_server_certificate()
        self.argv = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-c", f"listen_addresses={self.address}",
            "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "unix_socket_permissions=0700",
            "-c", "password_encryption=scram-sha-256",
            "-c", "log_min_error_statement=panic",  # a failed ALTER ROLE must not log its password
            # TLS on every TCP session (pg_hba.conf has hostssl lines only), with a certificate the control
            # plane's own authority issued for the address bound.
            "-c", "ssl=on",
            "-c", f"ssl_cert_file={cert_file}",
            "-c", f"ssl_key_file={key_file}",
            "-c", "ssl_min_protocol_version=TLSv1.2",
        ]  # fmt: skip
        # SIGINT is PostgreSQL's fast shutdown: roll back open transactions, checkpoint, exit.
        self.stop_signal = signal.SIGINT

    def _initdb(self) -> None:
        assert self.secrets is not None
        self.data_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.data_dir.parent, prefix=".pwfile.") as pwfile:
            pwfile.write(self.secrets.postgres_superuser_password + "\n")
            pwfile.flush()
            argv = [
                str(self.bin_dir / "initdb"),
                f"--pgdata={self.data_dir}",
                f"--username={self.secrets.postgres_superuser}",
                f"--pwfile={pwfile.name}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-instructions",
            ]
            with self.log_file.open("a") as log_handle:
                subprocess.run(argv, stdout=log_handle, stderr=subprocess.STDOUT, check=True)
        log.info("initialised PostgreSQL data directory %s", self.data_dir)

    def _write_hba(self) -> None:
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(hba_lines(self.client_networks))
        hba.chmod(0o600)

    def _write_server_certificate(self) -> tuple[Path, Path]:
        """PostgreSQL's certificate (the key 0600, as it requires), see :func:`write_server_certificate`."""
        name = CERTIFICATE_NAMES["postgres"]
        return write_server_certificate(self.serving_authority(), name, self.address, self.data_dir)

    def _admin_connection(
        self, timeout: float, dbname: str = "postgres", secrets: ControlPlaneSecrets | None = None
    ) -> psycopg.Connection[tuple[object, ...]]:
        secrets = secrets or self.secrets
        assert secrets is not None
        return psycopg.connect(
            postgres_tls(self.trusted_authorities(), "the control plane's secrets"),
            host=self.address,
            port=self.port,
            user=secrets.postgres_superuser,
            password=secrets.postgres_superuser_password,
            dbname=dbname,
            connect_timeout=max(1, round(timeout)),
            autocommit=True,
        )

    def ready(self, timeout: float) -> None:
        try:
            with self._admin_connection(timeout) as connection:
                connection.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            if self.previous is None or "authentication failed" not in str(exc):
                raise
            self._finish_interrupted_rotation(timeout)

    def _finish_interrupted_rotation(self, timeout: float) -> None:
        """The superuser still has the previous password: set the current one (the secrets file wins)."""
        assert self.secrets is not None
        with self._admin_connection(timeout, secrets=self.previous) as connection:
            set_password(
                connection, self.secrets.postgres_superuser, self.secrets.postgres_superuser_password
            )
        log.warning(
            "PostgreSQL: an interrupted rotation had left the old superuser password; set the new one"
        )

    def bootstrap(self) -> None:
        assert self.secrets is not None
        user, database = self.secrets.postgres_user, self.secrets.postgres_database
        with self._admin_connection(5.0) as connection:
            exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
            # The password is set at every start, so a rotated secret takes effect on restart.
            set_password(connection, user, self.secrets.postgres_password, create=not exists)
            if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                connection.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(user)
                    )
                )
                log.info("created database %s owned by %s", database, user)


POSTMASTER_PID = "postmaster.pid"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"


# The common name of each published service's certificate.
CERTIFICATE_NAMES = {
    "postgres": "han control plane postgres",
    "redis": "han control plane redis",
    "s3": "han control plane s3",
    "metrics": "han control plane metrics",  # the supervisor's own /metrics (metrics_server.py)
}


@dataclass(frozen=True)
class CertificateSite:
    """Where a published service's server certificate lives (SERVER_CERT and SERVER_KEY in ``directory``)."""

    service: str  # its name in the endpoints file
    common_name: str
    directory: Path


def certificate_sites(layout: Layout) -> list[CertificateSite]:
    """Every server certificate of a control plane: PostgreSQL's, stunnel's (Redis), the S3 gateway's and the
    supervisor's own /metrics's (not a service of the endpoints file's: its ``metrics`` entry)."""
    directories = {"postgres": "postgres", "redis": "redis-tls", "s3": "s3", "metrics": "metrics"}
    return [
        CertificateSite(service, CERTIFICATE_NAMES[service], layout.data_dir(directory))
        for service, directory in directories.items()
    ]


def write_server_certificate(
    authority: Authority, common_name: str, address: str, directory: Path
) -> tuple[Path, Path]:
    """A certificate for the address bound and the node's names, issued at every start by the control
    plane's authority (kept in the secrets file), written to ``directory`` (0600 both); returns the files.

    A restart therefore always serves a certificate of the authority the secrets file says is serving
    (:func:`han_worker.control_plane.admin_secrets.serving_generation`)."""
    issued = authority.issue(common_name, node_names(), [address])
    cert_file, key_file = directory / SERVER_CERT, directory / SERVER_KEY
    write_private_file(key_file, issued.key_pem)
    write_private_file(cert_file, issued.cert_pem)
    return cert_file, key_file


def hba_lines(client_networks: tuple[str, ...]) -> str:
    """pg_hba.conf: scram-sha-256 everywhere; over TCP only with TLS (``hostssl``), so a plain-text session
    finds no line and is refused. No ``host`` or ``hostnossl`` line."""
    lines = ["# Written by han-control-plane at every start; edits are overwritten.",
             "local all all scram-sha-256"]  # fmt: skip
    for network in client_networks:
        lines.append(f"hostssl all all {ipaddress.ip_network(network, strict=False)} scram-sha-256")
    return "\n".join(lines) + "\n"


def node_names() -> list[str]:
    """The names this node goes by, for the servers' certificates (clients that dial a name verify it)."""
    names = [socket.gethostname(), socket.getfqdn()]
    return sorted({name for name in names if name and _is_dns_name(name)})


def _is_dns_name(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return all(
            label and len(label) < 64 and label.replace("-", "").isalnum() for label in name.split(".")
        )
    return False


SYSV_SHM_TABLE = Path("/proc/sysvipc/shm")
# postmaster.pid: line 7 holds the System V shared memory key and id ("  1614001    557084").
SHM_LINE = 6


def shared_memory_id(postmaster_pid: Path) -> int | None:
    try:
        lines = postmaster_pid.read_text().splitlines()
    except OSError:
        return None
    words = lines[SHM_LINE].split() if len(lines) > SHM_LINE else []
    return int(words[1]) if len(words) == 2 and words[1].isdigit() else None


def attached_processes(segment: int) -> int:
    """How many processes are attached to System V shared memory ``segment`` (0 when it is gone)."""
    try:
        rows = SYSV_SHM_TABLE.read_text().splitlines()[1:]
    except OSError:
        return 0
    for row in rows:
        # key shmid perms size cpid lpid nattch ...
        columns = row.split()
        if len(columns) > 6 and columns[1] == str(segment):
            return int(columns[6])
    return 0


def set_password(
    connection: psycopg.Connection[tuple[object, ...]], role: str, password: str, *, create: bool = False
) -> None:
    """ALTER (or CREATE) ROLE ... LOGIN PASSWORD; the server hashes it with scram-sha-256.

    Sessions already open keep working: a password is checked only when a session starts."""
    verb = sql.SQL("CREATE") if create else sql.SQL("ALTER")
    connection.execute(
        sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(verb, sql.Identifier(role), sql.Literal(password))
    )


@dataclass
class RedisService(Service):
    """Valkey on a unix socket only (``port 0``), in the control plane's 0700 run directory: off the node's
    loopback altogether. :class:`StunnelService` serves the published address and port over TLS and forwards
    to the socket (no PyPI Redis or Valkey build has TLS; one path for both providers).

    No pid file (``daemonize no`` and no ``pidfile``): a killed one leaves no lock behind, only its
    append-only files, which are data and which it recovers from at the next start. Valkey removes a socket
    file left at its path before it binds."""

    server: Path = Path()
    data_dir: Path = Path()
    socket_path: Path = Path()

    @property
    def ports(self) -> tuple[int, ...]:
        return ()  # no TCP port of its own: stunnel holds the published one

    def prepare(self) -> None:
        assert self.secrets is not None
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = self.data_dir / "redis.conf"
        # Passwords live in this 0600 file, not in argv. "default" is off: every client authenticates.
        # The worker may touch only keys and channels under han: and no admin or dangerous command.
        # ">password" for each generation (an ACL user may have several; user names do not rotate).
        admin_passwords = " ".join(f">{g.redis_admin_password}" for g in self.generations())
        worker_passwords = " ".join(f">{g.redis_password}" for g in self.generations())
        lines = [
            *valkey_listen_lines(self.socket_path),
            "protected-mode yes",
            "daemonize no",
            f"dir {self.data_dir}",
            "appendonly yes",
            "appendfsync everysec",
            "save 300 1",
            "user default off",
            f"user {self.secrets.redis_admin_user} on {admin_passwords} ~* &* +@all",
            f"user {self.secrets.redis_user} on {worker_passwords} resetchannels ~han:* &han:* "
            "+@all -@admin -@dangerous",
        ]
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        config.chmod(0o600)
        self.argv = [str(self.server), str(config)]

    def ready(self, timeout: float) -> None:
        """PING as the admin user on the socket (stunnel, started beside it, is checked on its own)."""
        assert self.secrets is not None
        client = redis.Redis(
            unix_socket_path=str(self.socket_path),
            username=self.secrets.redis_admin_user,
            password=self.secrets.redis_admin_password,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            client.ping()
        finally:
            client.close()


def valkey_listen_lines(socket_path: Path) -> list[str]:
    """Valkey's listening lines: no TCP port, a unix socket that only its owner may connect to (its
    directory is 0700 as well)."""
    # bind: should a TCP port ever be set at run time (CONFIG SET port), the loopback only, not every address.
    return ["bind 127.0.0.1", "port 0", f"unixsocket {socket_path}", "unixsocketperm 700"]


# stunnel's own name for the TLS service in its configuration file (its log lines name it).
STUNNEL_SERVICE = "redis"
STUNNEL_CONFIG = "stunnel.conf"  # in its data directory


@dataclass
class StunnelService(Service):
    """stunnel in front of Valkey's socket: TLS on the published Redis address and port, with a certificate
    the control plane's authority issues for that address at every start (as PostgreSQL's).

    Foreground, no pid file, logging to its own log; not published itself (the endpoints file names Redis at
    this address and port). A new certificate needs a new process: the supervisor's restart of this service
    (crash, or a restart of the control plane) issues one."""

    server: Path = Path()
    data_dir: Path = Path()
    socket_path: Path = Path()
    published: bool = False

    def prepare(self) -> None:
        assert self.secrets is not None
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        cert_file, key_file = write_server_certificate(
            self.serving_authority(), CERTIFICATE_NAMES["redis"], self.address, self.data_dir
        )
        config = self.data_dir / STUNNEL_CONFIG
        text = stunnel_config(f"{self.address}:{self.port}", self.socket_path, cert_file, key_file)
        write_private_file(config, text.encode())
        self.argv = [str(self.server), str(config)]

    def ready(self, timeout: float) -> None:
        assert self.secrets is not None
        check = redis_check(
            self.secrets.redis_admin_user,
            self.secrets.redis_admin_password,
            self.trusted_authorities(),
            "the control plane's secrets",
        )
        check(self.endpoint, timeout)


def stunnel_config(accept: str, socket_path: Path, cert_file: Path, key_file: Path) -> str:
    """stunnel's configuration: in the foreground (the supervisor's child), no pid file, no syslog (its
    messages go to the service's log); plain TLS (no ``protocol``: Redis clients start TLS at once), TLS 1.2
    or later, forwarding to Valkey's unix socket."""
    lines = [
        "; Written by han-control-plane at every start; edits are overwritten.",
        "foreground = yes",
        "pid =",
        "syslog = no",
        # Problems only (a refused handshake among them), not a line per connection: every worker probes
        # every few seconds.
        "debug = warning",
        f"[{STUNNEL_SERVICE}]",
        f"accept = {accept}",
        f"connect = {socket_path}",
        f"cert = {cert_file}",
        f"key = {key_file}",
        "sslVersionMin = TLSv1.2",
    ]
    return "\n".join(lines) + "\n"


# weed's first stop hook is its filer's gRPC graceful stop, which waits out a 15 s timeout for streams that
# its own S3 gateway and metadata aggregator hold open, and only then stops the filer and the volume server
# (~20 ms; seaweedfs PRs #9037, #11363). Meanwhile its HTTP servers still answer, so in-flight uploads get
# these seconds to finish. Killing it then is a crash, which it recovers from at the next start (the failover
# bench and the drill kill it every round): its writes are in the files already, and a cut upload is retried
# by its worker from the spool.
SEAWEED_STOP_GRACE_S = 3.0
# weed >= 4.2x reads this (certreload.RefreshIntervalEnv) for its HTTPS and gRPC certificates.
TLS_REFRESH_ENV, TLS_REFRESH_INTERVAL = "WEED_TLS_CERT_REFRESH_INTERVAL", "2s"


@dataclass
class SeaweedS3Service(Service):
    stop_grace: float | None = SEAWEED_STOP_GRACE_S
    server: Path = Path()
    data_dir: Path = Path()
    internal_ports: tuple[
        int, ...
    ] = ()  # master, master gRPC, volume, volume gRPC, filer, filer gRPC, S3 gRPC

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, *self.internal_ports)

    def lock_files(self) -> list[Path]:
        # The unix sockets it was told to put in its data directory. Its gRPC sockets in /tmp are named by
        # port alone, so they are removed by port, and only on the host that ran it (leftovers.py).
        return [self.data_dir / "filer.sock", self.data_dir / "s3.sock"]

    def prepare(self) -> None:
        assert self.secrets is not None
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        identities = identities_file(self.data_dir)
        write_private_json(identities, self._identities())
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc = self.internal_ports
        self.cwd = self.data_dir  # weed writes some state relative to it
        self._private_tmp()
        # Mutual TLS on every internal port and fresh JWT keys, made again at each start (see the module).
        security = write_security_config(
            self.data_dir / SECURITY_DIR, [SEAWEED_INTERNAL_ADDRESS, self.address]
        )
        cert_file, key_file = write_server_certificate(
            self.serving_authority(), CERTIFICATE_NAMES["s3"], self.address, self.data_dir
        )
        self.argv = [
            str(self.server), f"-config_dir={security}", "server",
            f"-dir={self.data_dir}",
            # Only the S3 gateway (authenticated) listens on the private address: SeaweedFS's master,
            # volume and filer stay on the node's loopback, where they answer only weed's own components.
            f"-ip={SEAWEED_INTERNAL_ADDRESS}", f"-ip.bind={SEAWEED_INTERNAL_ADDRESS}",
            f"-s3.ip.bind={self.address}",
            "-master.telemetry=false",
            # Every start picks new ports, so the master's Raft state (kept per port, m<port>/) has always
            # been fresh; a restart in place on the same ports would otherwise resume it and wait ~20 s for
            # an election before the S3 gateway answers. The volumes hold the data and re-register.
            "-master.resumeState=false",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={s3_grpc}",
            # HTTPS only: with a key and no -s3.port.https, weed serves TLS on -s3.port (and on its copy of
            # that port on 127.0.0.1) and opens no plain-HTTP S3 port; the certificate is the control
            # plane's authority's, issued for the address bound.
            *s3_tls_flags(cert_file, key_file),
            f"-s3.config={identities}",  # without it SeaweedFS accepts any key
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-volume.preStopSeconds=0",  # no peers to drain: skip the default 10 s wait on stop
        ]  # fmt: skip

    def _private_tmp(self) -> None:
        """Give weed a temporary directory of its own (TMPDIR), emptied at each start, for its logs.

        weed 4.48 still puts the unix sockets of its gRPC servers at fixed paths in the shared /tmp
        (seaweedfs-<component>-grpc-<port>.sock) and its components dial them: with mutual TLS on every
        gRPC server, a socket another user put there first carries nothing readable, but it would keep the
        S3 gateway from starting, so ports that such a socket names are never picked
        (:func:`han_worker.control_plane.leftovers.stale_seaweed_socket_ports`)."""
        tmp = self.data_dir / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        # The S3 gateway re-reads its certificate this often, so that a rotation's new one is served within
        # seconds (weed's default is 5 h); a look at two files' modification times, nothing more.
        self.env = {**os.environ, "TMPDIR": str(tmp), TLS_REFRESH_ENV: TLS_REFRESH_INTERVAL}

    def _identities(self) -> dict[str, object]:
        assert self.secrets is not None
        return s3_identities(self.generations())

    def _root_client(self, timeout: float) -> Minio:
        assert self.secrets is not None
        root = S3Credentials(
            self.secrets.s3_root_access_key, self.secrets.s3_root_secret_key, self.secrets.s3_bucket
        )
        return s3_client(
            self.endpoint, root, ca_cert=self.trusted_authorities(), origin="the control plane's secrets",
            timeout=timeout,
        )  # fmt: skip

    def ready(self, timeout: float) -> None:
        # The S3 port answers before a volume can take writes: ready means an object was written.
        assert self.secrets is not None
        client, bucket = self._root_client(timeout), self.secrets.s3_bucket
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
            log.info("created bucket %s", bucket)
        client.put_object(bucket, ".han-ready-probe", io.BytesIO(b"ok"), 2)
        client.remove_object(bucket, ".han-ready-probe")


def s3_tls_flags(cert_file: Path, key_file: Path) -> list[str]:
    """weed's flags for an S3 gateway that speaks HTTPS on its published port and nothing else there.

    ``-s3.port.https`` must stay unset: given, it adds an HTTPS port and keeps ``-s3.port`` in plain HTTP.
    The gateway's unix socket (``-s3.localSocket``, in the 0700 data directory) stays plain HTTP: weed
    offers no TLS there, and only this user can enter that directory."""
    return [f"-s3.cert.file={cert_file}", f"-s3.key.file={key_file}"]


def s3_identities(generations: list[ControlPlaneSecrets]) -> dict[str, object]:
    """SeaweedFS's identities: root, and the worker limited to its bucket, with each generation's keys.

    Two generations during a rotation: old and new keys both work until the rotation retires the old."""
    bucket = generations[0].s3_bucket
    root = [{"accessKey": g.s3_root_access_key, "secretKey": g.s3_root_secret_key} for g in generations]
    worker = [{"accessKey": g.s3_access_key, "secretKey": g.s3_secret_key} for g in generations]
    return {
        "identities": [
            {
                "name": "han-root",
                "credentials": root,
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "han-worker",
                "credentials": worker,
                "actions": [f"Read:{bucket}", f"Write:{bucket}", f"List:{bucket}", f"Tagging:{bucket}"],
            },
        ]
    }


def identities_file(data_dir: Path) -> Path:
    return data_dir / "s3-identities.json"


def valkey_socket(layout: Layout) -> Path:
    """Valkey's unix socket, in the run directory (0700, beside PostgreSQL's)."""
    return layout.run_dir() / "valkey.sock"


@dataclass(frozen=True)
class Placement:
    """Where the services listen: the bind address, the published ports and SeaweedFS's own ports."""

    address: str
    ports: dict[str, int]
    internal_ports: tuple[int, ...]
    client_networks: tuple[str, ...]


def build_services(
    layout: Layout,
    binaries: ServerBinaries,
    secrets: ControlPlaneSecrets,
    placement: Placement,
    previous: ControlPlaneSecrets | None = None,
) -> list[Service]:
    address, ports = placement.address, placement.ports
    return [
        PostgresService(
            "postgres", address, ports["postgres"], layout.log_file("postgres"),
            bin_dir=binaries.postgres_bin_dir, data_dir=layout.data_dir("postgres"),
            socket_dir=layout.run_dir(), secrets=secrets, client_networks=placement.client_networks,
            previous=previous,
        ),
        RedisService(
            "redis", address, ports["redis"], layout.log_file("redis"),
            server=binaries.redis_server, data_dir=layout.data_dir("redis"),
            socket_path=valkey_socket(layout), secrets=secrets, previous=previous,
        ),
        StunnelService(
            "redis-tls", address, ports["redis"], layout.log_file("redis-tls"),
            server=binaries.tls_terminator, data_dir=layout.data_dir("redis-tls"),
            socket_path=valkey_socket(layout), secrets=secrets, previous=previous,
        ),
        SeaweedS3Service(
            "s3", address, ports["s3"], layout.log_file("s3"),
            server=binaries.s3_server, data_dir=layout.data_dir("s3"),
            secrets=secrets, previous=previous,
            internal_ports=placement.internal_ports,
        ),
    ]  # fmt: skip
