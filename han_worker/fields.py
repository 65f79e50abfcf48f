"""Reading one decoded JSON document field by field, with errors that name the origin and the field.

Every document the package reads (the endpoints file, credentials, the worker configuration, the
control plane's secrets) goes through :class:`FieldReader`. Standard library only.
"""

from __future__ import annotations

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


def json_type_name(value: object) -> str:
    """Name a decoded JSON value's type as the file's author would know it."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


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
        return value

    def optional_string(self, key: str) -> str | None:
        return None if self.raw(key) is None else self.string(key)

    def integer(self, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self._typed(key, self.raw(key), int, "an integer")
        if maximum is not None and minimum is not None and not minimum <= value <= maximum:
            self.fail(key, f": {value} is out of range {minimum}-{maximum}")
        if minimum is not None and value < minimum:
            self.fail(key, f": {value} is less than {minimum}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return self._typed(key, self.data.get(key, default), bool, "true or false")

    def child(self, key: str) -> FieldReader:
        value = self._typed(key, self.raw(key), dict, "an object")
        return FieldReader(value, self.origin, self.error, prefix=f"{self.name(key)}.")
