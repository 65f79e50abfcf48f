"""The door every external value comes in by: JSON text, numbers and strings, read with bounds.

Every document the package reads (the endpoints file, credentials, the worker configuration, the
control plane's secrets, ``--params-json``) is decoded by :func:`decode_json` and read field by field
through :class:`FieldReader`; command-line flags use the same bounds (``han_worker.cli.options``). So
what comes in is what Python and PostgreSQL can hold: JSON nested at most :data:`MAX_JSON_DEPTH` deep
(``json.loads`` would overflow Python's stack first), no larger than :data:`MAX_JSON_BYTES`, finite
numbers, integers in PostgreSQL's ranges, text without NUL and encodable as UTF-8. Errors name the
origin (file, flag) and the field. Standard library only: the Ansible lookup plugin imports it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import NoReturn, TypeVar

_T = TypeVar("_T")
_JSON_TYPE_NAMES = {
    type(None): "null",
    bool: "bool",
    int: "integer",
    float: "number",
    str: "str",
    dict: "object",
    list: "array",
}
# PostgreSQL's integer and bigint: attempt counts and epochs are `integer` columns of the ledger.
INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1
_COLUMN_LIMITS = frozenset({INT4_MAX, INT8_MAX})  # a bound of storage, not of meaning
MAX_JSON_DEPTH = 64
MAX_JSON_BYTES = 1 << 20
# A file system's limit on one name (ext4, XFS, APFS: 255 bytes; NTFS: 255 UTF-16 units, never more).
MAX_NAME_BYTES = 255
# Durations past a month are typos, and larger ones overflow a socket's timeout or PostgreSQL's interval.
MAX_SECONDS = 30 * 86400.0
# A JSON string (escapes included), possessive so that a long one costs no backtracking.
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]++")


def text_problem(text: str) -> str | None:
    """Why PostgreSQL (text, jsonb) could not store ``text``, or None when it can."""
    if "\0" in text:
        return "holds a NUL character (\\x00)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid UTF-8 ({exc.object[exc.start]!r} at character {exc.start})"
    return None


def check_text(text: str, what: str, error: type[ValueError]) -> str:
    """``text`` when PostgreSQL can store it; ``error`` names ``what`` otherwise."""
    problem = text_problem(text)
    if problem is not None:
        raise error(f"{what} {problem}")
    return text


def storable_text(text: str) -> str:
    """``text`` with what PostgreSQL cannot store escaped (NUL as ``\\x00``, a lone surrogate as ``\\udcff``):
    for messages, which are recorded whatever they quote."""
    return text.replace("\0", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _too_deep(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest past ``limit``; a loop, so deep input cannot overflow it."""
    brackets = _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text))
    depth = 0
    for bracket in brackets:
        depth += 1 if bracket in "[{" else -1
        if depth > limit:
            return True
    return False


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large for a float")
    return value


def _refuse_constant(constant: str) -> object:
    raise ValueError(f"{constant} is not allowed (JSON has no {constant})")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # dict(pairs) would keep the last of two equal keys: which one the author meant is unknowable.
    document: dict[str, object] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"key {shown(key)} appears twice in one object")
        document[key] = value
    return document


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters: hostile input can be a megabyte long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def _field(path: str) -> str:
    return f"field '{path}'" if path else "the document"


def _check_strings(value: object, origin: str, error: type[ValueError]) -> None:
    """Every key and string in a decoded document is text PostgreSQL can store (a loop, not recursion)."""
    pending: list[tuple[object, str]] = [(value, "")]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            check_text(item, f"{origin}: {_field(path)}", error)
        elif isinstance(item, dict):
            for key, child in item.items():
                check_text(key, f"{origin}: a key of {_field(path)}", error)
                pending.append((child, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            pending.extend((child, f"{path}[{index}]") for index, child in enumerate(item))


def decode_json(
    text: str, origin: str, error: type[ValueError], *, max_bytes: int = MAX_JSON_BYTES
) -> object:
    """``text`` decoded as bounded JSON; ``error`` names ``origin`` and the problem.

    Refused: more than ``max_bytes`` characters, nesting deeper than :data:`MAX_JSON_DEPTH`, NaN and
    Infinity (also as overflowing numbers such as ``1e999``), integers of more than 4300 digits, repeated
    keys, and strings PostgreSQL cannot store (NUL, lone surrogates)."""
    if len(text) > max_bytes:
        raise error(f"{origin}: longer than {max_bytes} characters")
    if _too_deep(text, MAX_JSON_DEPTH):
        raise error(f"{origin}: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(
            text,
            parse_float=_finite_float,
            parse_constant=_refuse_constant,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError:  # _too_deep should make this impossible; never a traceback all the same
        raise error(f"{origin}: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError included
        raise error(f"{origin}: not valid JSON: {exc}") from None
    _check_strings(value, origin, error)
    return value


def check_storable_json(value: object, origin: str, error: type[ValueError]) -> object:
    """``value`` (built in Python: an API's parameters, a backend's summary) as a jsonb column takes it: JSON
    types, finite numbers, storable text, within :func:`decode_json`'s bounds; ``error`` otherwise."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:  # not JSON, NaN/Infinity, circular, too deep
        raise error(f"{origin}: not storable as JSON: {shown(exc, 200)}") from None
    return decode_json(text, origin, error)


def json_type_name(value: object) -> str:
    """Name a decoded JSON value's type as the file's author would know it."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


class RequestError(ValueError):
    """A bad request to the lab's API (``han_worker.client``); the message names the flag (or argument) at
    fault."""


class FieldReader:
    """Typed access to one JSON object whose errors name the origin and the field's full path.

    ``FieldReader(doc, "/x/e.json", EndpointsError).child("services").child("redis").integer("port", 1, 9)``
    fails with ``/x/e.json: field 'services.redis.port': 70000 is out of range 1-9``.
    """

    def __init__(
        self, data: Mapping[str, object], origin: str, error: type[ValueError], prefix: str = ""
    ) -> None:
        self.data = data
        self.origin = origin
        self.error = error
        self.prefix = prefix

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def fail(self, key: str, problem: str) -> NoReturn:
        """Raise ``error``; ``problem`` continues the sentence ``field 'a.b'``."""
        raise self.error(f"{self.origin}: field '{self.name(key)}'{problem}")

    def raw(self, key: str) -> object:
        if key not in self.data:
            self.fail(key, " is missing")
        return self.data[key]

    def _typed(self, key: str, value: object, expected: type[_T], article_noun: str) -> _T:
        # bool is an int subclass in Python but not in JSON: true is no port number.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            self.fail(key, f" must be {article_noun}, not {json_type_name(value)}")
        return value

    def string(self, key: str) -> str:
        value = self._typed(key, self.raw(key), str, "a string")
        if not value.strip():
            self.fail(key, " must not be empty")
        problem = text_problem(value)
        if problem is not None:
            self.fail(key, f" {problem}")
        return value

    def optional_string(self, key: str) -> str | None:
        return None if self.raw(key) is None else self.string(key)

    def integer(self, key: str, minimum: int = INT8_MIN, maximum: int = INT8_MAX) -> int:
        """An integer within ``minimum``-``maximum`` (by default PostgreSQL's bigint)."""
        value = self._typed(key, self.raw(key), int, "an integer")
        if value < minimum and maximum in _COLUMN_LIMITS:
            self.fail(key, f": {shown(value)} is less than {minimum}")
        if not minimum <= value <= maximum:
            self.fail(key, f": {shown(value)} is out of range {minimum}-{maximum}")
        return value

    def seconds(self, key: str, default: float, minimum: float, maximum: float = MAX_SECONDS) -> float:
        """A finite number of seconds within ``minimum``-``maximum``; ``default`` when absent."""
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f" must be a number of seconds, not {json_type_name(value)}")
        if not (math.isfinite(value) and minimum <= value <= maximum):
            bounds = f">= {minimum:g} and <= {maximum:g}"
            self.fail(key, f": {shown(value)} must be a finite number of seconds {bounds}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        return self._typed(key, self.data.get(key, default), bool, "true or false")

    def child(self, key: str) -> FieldReader:
        value = self._typed(key, self.raw(key), dict, "an object")
        return FieldReader(value, self.origin, self.error, prefix=f"{self.name(key)}.")
