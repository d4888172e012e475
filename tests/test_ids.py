from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from foreman.ids import UlidMinter, _encode, new_ulids


@given(st.integers(min_value=0, max_value=(1 << 128) - 1))
def test_encoding_matches_python_ulid(value: int) -> None:
    assert _encode(value) == str(ULID.from_int(value))


def test_minted_ids_are_valid_strictly_increasing_and_timestamped_now() -> None:
    before = time.time()
    ids = new_ulids(1000) + new_ulids(1000)
    assert ids == sorted(set(ids))
    assert all(str(ULID.from_str(i)) == i for i in ids)
    assert before - 1 <= ULID.from_str(ids[0]).timestamp <= time.time() + 1


def test_minting_across_a_low_bits_boundary_stays_monotonic() -> None:
    minter = UlidMinter()
    future_ms = (time.time_ns() // 1_000_000) + 60_000
    minter._last = (future_ms << 80) | ((1 << 20) - 3)
    ids = minter.mint(10)
    values = [int(ULID.from_str(i)) for i in ids]
    assert values == list(range(values[0], values[0] + 10))
    assert [str(ULID.from_int(v)) for v in values] == ids
