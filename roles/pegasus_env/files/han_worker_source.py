"""Hash and stage han_worker's sources on the controller (role han.infra.pegasus_env).

The digest covers what decides the wheel's content, by relative path and bytes: ``pyproject.toml`` and every
file of the ``han_worker`` package except bytecode. Wheels carry timestamps, so hashing a built wheel would
change at every build; hashing the sources does not. ``stage`` copies those files (plus the README that the
build needs) into a clean directory, so that the wheel is built outside the working tree and from exactly the
files that were hashed.

    han_worker_source.py digest SOURCE_DIR
    han_worker_source.py stage SOURCE_DIR DEST_DIR --expect DIGEST

Standard library only: it runs with the controller's Ansible Python.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

PACKAGE = "han_worker"
PROJECT_FILE = "pyproject.toml"
# Needed to build the wheel but not part of what the env runs: staged, not hashed.
BUILD_ONLY_FILES = ("README.md",)


class SourceError(Exception):
    """The source directory is not han_worker's, or it changed while being staged."""


def source_files(root: Path) -> list[Path]:
    """The files the digest covers, relative to root, sorted."""
    if not (root / PROJECT_FILE).is_file() or not (root / PACKAGE).is_dir():
        raise SourceError(f"{root} holds no han_worker sources: {PROJECT_FILE} or {PACKAGE}/ is missing")
    files = [Path(PROJECT_FILE)]
    for path in (root / PACKAGE).rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".pyo"}:
            files.append(path.relative_to(root))
    return sorted(files, key=lambda path: path.as_posix())


def digest(root: Path) -> str:
    """SHA-256 over each file's relative path and content, length-prefixed so that no two trees collide."""
    hasher = hashlib.sha256()
    for relative in source_files(root):
        name = relative.as_posix().encode()
        content = (root / relative).read_bytes()
        for part in (name, content):
            hasher.update(len(part).to_bytes(8, "big"))
            hasher.update(part)
    return hasher.hexdigest()


def stage(root: Path, dest: Path, expected: str) -> str:
    """Copy the hashed files and the build-only files into dest; fail unless they still have `expected`."""
    if dest.exists() and any(dest.iterdir()):
        raise SourceError(f"{dest} is not empty")
    for relative in [*source_files(root), *(Path(name) for name in BUILD_ONLY_FILES)]:
        if (root / relative).is_file():
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / relative, dest / relative)
    staged = digest(dest)
    if staged != expected:
        raise SourceError(
            f"han_worker's sources in {root} changed during the run (digest {staged}, expected {expected}); "
            "run the play again"
        )
    return staged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Hash and stage han_worker's sources on the controller.")
    commands = parser.add_subparsers(dest="command", required=True)
    digest_parser = commands.add_parser("digest", help="print the sources' digest")
    digest_parser.add_argument("source", type=Path)
    stage_parser = commands.add_parser(
        "stage", help="copy the sources for a wheel build, checking the digest"
    )
    stage_parser.add_argument("source", type=Path)
    stage_parser.add_argument("dest", type=Path)
    stage_parser.add_argument("--expect", required=True, help="the digest the staged files must have")
    args = parser.parse_args(argv)
    try:
        if args.command == "digest":
            print(digest(args.source))
        else:
            print(stage(args.source, args.dest, args.expect))
    except (SourceError, OSError) as error:
        print(f"han_worker_source: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
