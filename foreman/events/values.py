"""What a value must be for the log to hold it: JSON that reads back as it was written.

Every client value an event carries (a job's request and metadata, a result)
is checked here, once, by the event types themselves, so nothing reaches the
journal that SQLite would store but Foreman could not decode again
(ADR-0032). The limits leave ample room for real requests (tool schemas,
long chats, images as base64) and are documented in the README:

- nesting: at most :data:`MAX_DEPTH` arrays and objects inside one another
  (pydantic's JSON reader stops near 200 levels, its writer at 255);
- strings and keys: Unicode, so no lone surrogate (``"\\ud800"``), which
  UTF-8 cannot encode;
- numbers: integers within 64 bits (what Ollama's Go decoder takes), and
  floats finite (JSON has no NaN or Infinity);
- size: at most :data:`MAX_VALUES` values in one field, and metadata at most
  :data:`MAX_METADATA_BYTES` once encoded; a string's length is bounded by
  ``FOREMAN_MAX_BODY`` alone.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationInfo

MAX_DEPTH = 100
"""Arrays and objects nested inside one field, counting the field's own."""
MAX_VALUES = 1_000_000
"""Values (strings, numbers, arrays, objects, ...) in one field."""
MAX_METADATA_BYTES = 64 * 1024
"""A job's ``metadata`` as JSON: it is echoed in every listing and webhook."""
SMALLEST_INT = -(2**63)
LARGEST_INT = 2**64 - 1
STORED = {"stored": True}
"""Validation context of an event read back from the log: its values were checked
when it was made, and an event an older build let in is read as it is, not refused."""


class _Walk:
    """One pass over a decoded JSON value; raises ValueError at the first fault."""

    def __init__(self) -> None:
        self.values = 0

    def value(self, value: object, path: str, depth: int) -> None:
        self.values += 1
        if self.values > MAX_VALUES:
            raise ValueError(f"more than {MAX_VALUES:,} values")
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, bool) or value is None:
            return
        elif isinstance(value, int):
            if not SMALLEST_INT <= value <= LARGEST_INT:
                raise ValueError(f"{_at(path)}integer {_digits(value)} is outside 64 bits")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{_at(path)}{value} is not a JSON number")
        elif isinstance(value, dict | list):
            self.container(value, path, depth + 1)
        else:
            raise ValueError(f"{_at(path)}{type(value).__name__} is not a JSON value")

    def container(self, value: dict[Any, Any] | list[Any], path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ValueError(f"{_at(path)}nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for name, item in value.items():
                key = str(name)  # from JSON, always a string already
                _check_text(key, path)
                self.value(item, f"{path}.{key}" if path else key, depth)
        else:
            for index, item in enumerate(value):
                self.value(item, f"{path}[{index}]", depth)


def _check_text(text: str, path: str) -> None:
    if text.isascii():
        return
    try:
        text.encode()
    except UnicodeEncodeError as error:
        bad = text[error.start]
        raise ValueError(
            f"{_at(path)}contains a lone surrogate ({bad!a}), which is not Unicode text"
        ) from None


def _at(path: str) -> str:
    """Where in the field, shortened: a deep path is mostly ``[0][0]...``."""
    if len(path) > 60:
        path = f"{path[:40]}…{path[-16:]}"
    return f"{path}: " if path else ""


def _digits(value: int) -> str:
    """An integer as a message can name it: a huge one by its number of digits."""
    if value.bit_length() <= 96:  # up to 29 digits
        return str(value)
    return f"of about {int(value.bit_length() * math.log10(2)) + 1} digits"


def storable_object(value: dict[str, Any]) -> dict[str, Any]:
    """``value``, checked against the limits (ValueError names the first fault)."""
    _Walk().container(value, "", 1)
    return value


def _stored(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and info.context.get("stored") is True


def _storable_field(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    return value if _stored(info) else storable_object(value)


def _storable_metadata(value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
    if value is None or _stored(info):
        return value
    storable_object(value)
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"is {size:,} bytes as JSON; at most {MAX_METADATA_BYTES:,} are kept")
    return value


def _unicode(text: str, info: ValidationInfo) -> str:
    if not _stored(info):
        _check_text(text, "")
    return text


JsonObject = Annotated[dict[str, Any], AfterValidator(_storable_field)]
"""A JSON object the log can hold and read back (see the module's limits)."""
Metadata = Annotated[dict[str, Any] | None, AfterValidator(_storable_metadata)]
"""A submitter's own data: a :data:`JsonObject` of at most ``MAX_METADATA_BYTES``."""
Text = Annotated[str, AfterValidator(_unicode)]
"""A client's string the log can hold: Unicode, no lone surrogates (refused)."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def readable(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, as Go's JSON decoder does."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


ReadableText = Annotated[str, AfterValidator(readable)]
"""A message Foreman writes from what a backend or receiver said: lone surrogates
become U+FFFD instead of failing the event that carries it."""
