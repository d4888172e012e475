from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from foreman.events.log import Durability, EventLog


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "foreman.db"


@pytest.fixture
def log(db_path: Path) -> Iterator[EventLog]:
    log = EventLog.open(db_path, durability=Durability.OFF)
    yield log
    log.close()
