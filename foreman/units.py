"""Durations and sizes as operators write them (``30s``, ``1h30m``, ``32MiB``): parsed
for the settings, and written back the same way in messages."""

from __future__ import annotations

import math
import re

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = "|".join(sorted(_DURATION_UNITS, key=len, reverse=True))
_DURATION_PART = re.compile(rf"({_NUMBER})({_UNIT})")
_DURATION = re.compile(rf"([+-]?)((?:{_NUMBER}(?:{_UNIT}))+)")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE = re.compile(rf"({_NUMBER})\s*([a-z]*)", re.IGNORECASE)
_BINARY_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def parse_duration(value: object) -> float:
    """Seconds, from a number of seconds or a Go duration such as ``30s``, ``5m``,
    ``1h30m`` or ``250ms`` (the form Ollama's ``keep_alive`` takes)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION.fullmatch(text)
            if match is None:
                raise ValueError(f"not a duration: {value!r}") from None
            sign, parts = match.groups()
            seconds = sum(
                float(number) * _DURATION_UNITS[unit]
                for number, unit in _DURATION_PART.findall(parts)
            )
            seconds = -seconds if sign == "-" else seconds
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite duration: {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` as :func:`parse_duration` reads it back: ``1h30m``, ``45s``, ``0.5s``."""
    hours, rest = divmod(seconds, 3600)
    minutes, rest = divmod(rest, 60)
    text = (f"{hours:.0f}h" if hours else "") + (f"{minutes:.0f}m" if minutes else "")
    return text + (f"{rest:g}s" if rest or not text else "")


def parse_size(value: object) -> int:
    """Bytes, from a whole number or a size such as ``32MiB``, ``512 KiB`` or ``1.5GB``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or match[2].lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {value!r}")
    return int(float(match[1]) * _SIZE_UNITS[match[2].lower()])


def format_size(size: int) -> str:
    """``size`` in the largest binary unit that holds it exactly: ``32MiB``, ``1000``."""
    for unit, factor in _BINARY_UNITS:
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
