"""Private files: read only what nobody else could have written, write owner-only and atomically.

On a shared cluster home directory a neighbour who can write our endpoints file, or the directory
it sits in, could point our workers at their own Redis and read every job. So a reader refuses any
file that someone else owns or could have written, and refuses secrets that others could read.

Standard library only: the Ansible lookup plugin imports this module on the controller.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from han_worker.fields import MAX_JSON_BYTES, decode_json, json_type_name

log = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]


class TrustedFileError(ValueError):
    """A protected file cannot be used; the message names the path and the problem."""


class UntrustedFileError(TrustedFileError):
    """The file is missing, or someone other than us could have written (or read) it."""


def check_trusted(path: StrPath, *, secret: bool = False) -> Path:
    """Refuse ``path`` unless it is a regular file that only we could have written.

    With ``secret=True`` also refuse a file that group or others could read (credentials).
    Returns the path for chaining.
    """
    file_path = Path(path)
    try:
        file_stat = file_path.stat()
    except FileNotFoundError:
        raise UntrustedFileError(f"{file_path}: does not exist") from None
    except OSError as exc:
        raise UntrustedFileError(f"{file_path}: cannot be examined: {exc.strerror}") from exc
    except ValueError:  # a NUL in the name: no file can have it
        raise UntrustedFileError(f"{file_path}: is not a usable path (it holds a NUL character)") from None
    if not stat.S_ISREG(file_stat.st_mode):
        raise UntrustedFileError(f"{file_path}: is not a regular file")
    # Windows has no POSIX owner or mode bits (st_mode there is synthesised from the read-only flag,
    # and ACLs decide access), so these checks would refuse or accept at random: skip them.
    if os.name == "nt":
        log.debug("%s: owner and mode not checked on Windows", file_path)
        return file_path
    _check_owner_and_mode(file_path, file_stat, secret=secret)
    # Both the directory holding the name we were given and the one holding the real file matter:
    # whoever can write either of them can swap the link or the file.
    for directory in sorted({file_path.absolute().parent, file_path.resolve().parent}):
        _check_directory(directory, file_path)
    return file_path


def _check_owner_and_mode(path: Path, file_stat: os.stat_result, *, secret: bool) -> None:
    uid = os.getuid()
    if file_stat.st_uid != uid:
        raise UntrustedFileError(f"{path}: is owned by uid {file_stat.st_uid}, not by us (uid {uid})")
    mode = stat.S_IMODE(file_stat.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedFileError(
            f"{path}: is writable by group or others (mode {mode:04o}); run chmod go-w {path}"
        )
    if secret and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UntrustedFileError(
            f"{path}: holds secrets but is accessible to group or others (mode {mode:04o}); "
            f"run chmod 600 {path}"
        )


def _check_directory(directory: Path, path: Path) -> None:
    try:
        dir_stat = directory.stat()
    except OSError as exc:
        raise UntrustedFileError(f"{path}: directory {directory} cannot be examined: {exc.strerror}") from exc
    # root owns /home and friends; a root-owned directory is as trustworthy as the system itself.
    if dir_stat.st_uid not in (os.getuid(), 0):
        raise UntrustedFileError(
            f"{path}: directory {directory} is owned by uid {dir_stat.st_uid}, not by us or root"
        )
    mode = stat.S_IMODE(dir_stat.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedFileError(
            f"{path}: directory {directory} is writable by group or others (mode {mode:04o}); "
            f"run chmod go-w {directory}"
        )


def read_trusted_json(path: StrPath, *, secret: bool = False) -> dict[str, object]:
    """Check ``path`` with :func:`check_trusted`, then read it as one JSON object."""
    file_path = check_trusted(path, secret=secret)
    try:
        with file_path.open("rb") as handle:
            content = handle.read(MAX_JSON_BYTES + 1)  # no more than the limit, whatever st_size says
    except OSError as exc:
        raise TrustedFileError(f"{file_path}: cannot be read: {exc.strerror}") from exc
    if len(content) > MAX_JSON_BYTES:
        raise TrustedFileError(f"{file_path}: larger than {MAX_JSON_BYTES} bytes")
    return parse_json_object(decode_utf8(content, str(file_path)), str(file_path))


def decode_utf8(content: bytes, origin: str) -> str:
    """``content`` as UTF-8 text; TrustedFileError names ``origin`` and the first bad byte."""
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrustedFileError(f"{origin}: not valid UTF-8: {exc.reason} at byte {exc.start}") from None


def parse_json_object(text: str, origin: str) -> dict[str, object]:
    """Decode ``text`` as one bounded JSON object (:func:`han_worker.fields.decode_json`);
    TrustedFileError names ``origin`` and the problem."""
    data = decode_json(text, origin, TrustedFileError)
    if not isinstance(data, dict):
        raise TrustedFileError(f"{origin}: must hold a JSON object, not {json_type_name(data)}")
    return data


def write_private_json(path: StrPath, document: Mapping[str, object] | list[object]) -> None:
    """Replace ``path`` atomically with ``document``, mode 0600; create its directory 0700 (see
    :func:`write_private_text`)."""
    write_private_text(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


def write_private_text(path: StrPath, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600; create its directory 0700.

    Temporary file in the same directory, fsync, rename: a reader on the shared filesystem sees the
    old document or the new one, never half of one, even if we die mid-write.
    """
    target = Path(path)
    _make_private_directories(target.parent)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        # mkstemp created the file 0600, and replace() keeps that mode even over a laxer old file.
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _make_private_directories(directory: Path) -> None:
    # Path.mkdir(parents=True) would create the parents with the umask's mode, and a umask of 002
    # would leave e.g. ~/.han writable by the group.
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new_directory in reversed(missing):
        new_directory.mkdir(mode=0o700, exist_ok=True)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory is synced; Windows cannot open a directory.
    if os.name == "nt":
        return
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
