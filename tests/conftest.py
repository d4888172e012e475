from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from foreman.events.log import Durability, EventLog
from foreman.events.store import open_log
from tests.running import Foreman, start_foreman


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "foreman.db"


@pytest.fixture
def log(db_path: Path) -> Iterator[EventLog]:
    log = open_log(db_path, durability=Durability.OFF)
    yield log
    log.close()


@pytest.fixture
async def foreman(db_path: Path, nursery: trio.Nursery) -> AsyncIterator[Foreman]:
    """A whole Foreman with default settings over loopback, the simulator behind it."""
    async for running in start_foreman(nursery, db_path):
        yield running


@pytest.fixture
async def http(foreman: Foreman) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=foreman.url, timeout=10) as client:
        yield client
