"""The benchmarks' workload (job traffic as Foreman writes it) and cached event logs.

Traffic comes in waves, as it does with many jobs in flight: a wave of jobs is
submitted, then the same jobs start, then they succeed. Each event is its own
append (``Append(stream=job_id, events=[event])``), so a group commit mixes the
events of many jobs.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from _report import progress, rate

from foreman.events.jobs import JobsProjection
from foreman.events.log import LOG_FORMAT, Append, Durability, LogError
from foreman.events.store import open_log
from foreman.events.types import Event, JobStarted, JobSubmitted, JobSucceeded
from foreman.ids import new_ulids

WORK_DIR = Path(__file__).resolve().parent / ".work"
"""Scratch and cached databases (gitignored)."""

WORKLOAD_VERSION = 1
"""Bump when the traffic below changes, so cached logs are built again."""

IN_FLIGHT = 1024
"""Jobs per wave: how many jobs are in flight at once."""

BACKENDS = ("http://127.0.0.1:11434", "http://10.0.0.2:11434")
MODELS = ("llama3", "llama3", "mistral", "qwen2.5:7b")

Work = list[tuple[str, Event]]
"""(stream, event) pairs, in the order they are appended."""


def chat_request(n: int, model: str) -> dict[str, object]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a concise support assistant."},
            {"role": "user", "content": f"Summarise ticket #{n} in one sentence, please."},
        ],
        "stream": False,
        "options": {"temperature": 0.2, "num_ctx": 4096, "seed": n},
    }


def chat_response(n: int, model: str) -> dict[str, object]:
    return {
        "model": model,
        "created_at": "2026-11-28T09:30:00.123456Z",
        "message": {
            "role": "assistant",
            "content": f"Ticket #{n}: the customer cannot log in after the password reset.",
        },
        "done_reason": "stop",
        "done": True,
        "total_duration": 1_834_000_000 + n % 1000,
        "load_duration": 12_000_000,
        "prompt_eval_count": 31,
        "prompt_eval_duration": 95_000_000,
        "eval_count": 18,
        "eval_duration": 1_700_000_000,
    }


def job_events(n: int) -> tuple[JobSubmitted, JobStarted, JobSucceeded]:
    """The three events of the ``n``th job: a chat submitted async, started, succeeded."""
    model = MODELS[n % len(MODELS)]
    return (
        JobSubmitted(kind="chat", model=model, request=chat_request(n, model), origin="async"),
        JobStarted(attempt=1, backend=BACKENDS[n % len(BACKENDS)]),
        JobSucceeded(result=chat_response(n, model)),
    )


def traffic(count: int, in_flight: int = IN_FLIGHT) -> Iterator[tuple[str, Event]]:
    """``count`` (stream, event) pairs of new jobs, wave after wave."""
    produced = 0
    first_job = 0
    while produced < count:
        streams = new_ulids(in_flight)
        jobs = [job_events(first_job + i) for i in range(in_flight)]
        first_job += in_flight
        for step in range(3):
            for stream, events in zip(streams, jobs, strict=True):
                if produced == count:
                    return
                yield stream, events[step]
                produced += 1


def build_work(count: int, in_flight: int = IN_FLIGHT) -> Work:
    """The traffic built up front, so timing measures the log and not pydantic."""
    return list(traffic(count, in_flight))


def chunked(work: Work, batch: int) -> list[list[Append]]:
    """The work as one-event appends, ``batch`` appends to a group commit."""
    appends = [Append(stream, [event]) for stream, event in work]
    return [appends[i : i + batch] for i in range(0, len(appends), batch)]


def batches(pairs: Iterator[tuple[str, Event]], size: int) -> Iterator[list[Append]]:
    while batch := [Append(stream, [event]) for stream, event in islice(pairs, size)]:
        yield batch


def db_files(path: Path) -> list[Path]:
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm")]


def remove_db(path: Path) -> None:
    for file in db_files(path):
        file.unlink(missing_ok=True)


def copy_db(source: Path, target: Path) -> None:
    """Copy a closed database (and its WAL, should one be left) to ``target``."""
    remove_db(target)
    for file, copy in zip(db_files(source), db_files(target), strict=True):
        if file.exists():
            shutil.copyfile(file, copy)


def scratch(name: str) -> Path:
    """A fresh, empty path for a scratch database under ``.work``."""
    WORK_DIR.mkdir(exist_ok=True)
    path = WORK_DIR / name
    remove_db(path)
    return path


def build_log(path: Path, count: int, *, batch: int = 8192) -> float:
    """Write ``count`` events of traffic to a new log at ``path``, fast (durability OFF,
    big group commits); returns the seconds it took."""
    remove_db(path)
    started = time.perf_counter()
    log = open_log(path, durability=Durability.OFF)
    try:
        done = 0
        for appends in batches(traffic(count), batch):
            log.append_many(appends)
            done += len(appends)
            if done % 100_000 < batch:
                elapsed = time.perf_counter() - started
                progress(f"  built {done:,} / {count:,} events ({rate(done, elapsed):,.0f}/s)")
    finally:
        log.close()
    return time.perf_counter() - started


def _is_complete(path: Path, count: int) -> bool:
    """The log at ``path`` holds ``count`` events and an up-to-date jobs projection."""
    try:
        log = open_log(path, durability=Durability.OFF)
    except (LogError, OSError) as error:
        progress(f"  cached log unusable ({error}); building it again")
        return False
    try:
        head, _ = log.head()
        checkpoint = log.checkpoint(JobsProjection())
        return head == count and checkpoint is not None and checkpoint[1] == head
    finally:
        log.close()  # the last connection's close also checkpoints the WAL into the file


def cached_log(count: int, *, rebuild: bool = False) -> tuple[Path, bool, float]:
    """A clean log of ``count`` events under ``.work``, built once and reused.

    Returns ``(path, reused, build_seconds)``; the file is closed and has no WAL,
    so it can be copied as it is.
    """
    WORK_DIR.mkdir(exist_ok=True)
    path = WORK_DIR / f"jobs-{count}-f{LOG_FORMAT}-w{WORKLOAD_VERSION}.db"
    if not rebuild and path.exists() and _is_complete(path, count):
        return path, True, 0.0
    progress(f"building a log of {count:,} events at {path} ...")
    building = path.with_suffix(".building.db")
    seconds = build_log(building, count)
    if any(file.exists() for file in db_files(building)[1:]):
        raise RuntimeError(f"{building} was closed but its WAL is still there")
    remove_db(path)
    building.rename(path)
    return path, False, seconds
