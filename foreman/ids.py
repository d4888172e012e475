"""ULIDs, minted fast enough for the journal's hot path.

python-ulid parses and validates ULIDs; minting one with it costs
several microseconds, most of the journal's budget per event (ADR-0021). This
mints *monotonic* ULIDs (the spec's variant): within one millisecond the
80-bit random part is incremented, so ids sort in the order they were minted.
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every 10-bit value as two Crockford base32 characters.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_RANDOM_BITS = 80
_LOW_MASK = (1 << 20) - 1


def _encode(value: int) -> str:
    """A 128-bit integer as 26 Crockford base32 characters (1 + 12 pairs + 1)."""
    pairs = _PAIRS
    middle = "".join([pairs[(value >> shift) & 1023] for shift in range(115, 4, -10)])
    return _ALPHABET[value >> 125] + middle + _ALPHABET[value & 31]


class UlidMinter:
    """Mints strictly increasing ULIDs; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def mint(self, count: int) -> list[str]:
        """``count`` new ULIDs, each greater than every one minted before."""
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            first = (now_ms << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS - 1)
            first = max(first, self._last + 1)
            self._last = first + count - 1
        ids: list[str] = []
        value = first
        while len(ids) < count:
            # Ids that differ only in their low 20 bits share the first 22 characters.
            low = value & _LOW_MASK
            run = min(count - len(ids), _LOW_MASK + 1 - low)
            prefix = _encode(value)[:22]
            pairs = _PAIRS
            ids.extend([prefix + pairs[v >> 10] + pairs[v & 1023] for v in range(low, low + run)])
            value += run
        return ids


_default_minter = UlidMinter()


def new_ulids(count: int) -> list[str]:
    return _default_minter.mint(count)


def new_ulid() -> str:
    return _default_minter.mint(1)[0]
