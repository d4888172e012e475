"""Audit: check the whole log, as ``foreman events verify`` does.

One pass over the events recomputes the hash chain, checks that ``seq`` has no
gaps and each stream's versions count up from 1, decodes every event, and folds
each projection in memory; then the stored projections and their checkpoints
are compared with that replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foreman.events.chain import GENESIS, chain_hash
from foreman.events.log import EventLog
from foreman.events.projection import Fold
from foreman.events.replay import Progress, collector_paused
from foreman.events.types import RecordedEvent, UnreadableEvent


@dataclass(frozen=True, slots=True)
class Problem:
    seq: int | None
    """The first event concerned, when the problem is in the events themselves."""
    message: str


def verify(log: EventLog, progress: Progress | None = None, *, limit: int = 100) -> list[Problem]:
    """Every problem found (at most ``limit``), first bad ``seq`` first; empty when sound.

    Reads one snapshot, so it can run beside a live server."""
    with log.snapshot(), collector_paused():
        return _verify(log, progress, limit)


def _verify(log: EventLog, progress: Progress | None, limit: int) -> list[Problem]:
    problems: list[Problem] = []
    head_seq, _ = log.head()
    folds = [Fold(projection, None) for projection in log.projections]
    versions: dict[str, int] = {}
    previous_seq, previous_hash, previous_time = 0, GENESIS, ""
    for done, row in enumerate(log.rows(), start=1):
        seq, _id, stream, version, _type, _schema_version, _data, recorded_at, hash_ = row
        if seq != previous_seq + 1:
            problems.append(
                Problem(previous_seq + 1, f"events {previous_seq + 1}..{seq - 1} are missing")
            )
        if chain_hash(previous_hash, *row[:-1]) != hash_:
            problems.append(
                Problem(
                    seq,
                    "hash does not match the chain: the event or one "
                    "before it was altered, inserted or removed",
                )
            )
        expected_version = versions.get(stream, 0) + 1
        if version != expected_version:
            problems.append(
                Problem(
                    seq, f"stream {stream} jumps to version {version}, expected {expected_version}"
                )
            )
        if recorded_at < previous_time:
            problems.append(
                Problem(
                    seq,
                    f"recorded_at {recorded_at} is earlier than the event before ({previous_time})",
                )
            )
        versions[stream] = version
        previous_seq, previous_hash, previous_time = seq, hash_, recorded_at
        event = RecordedEvent(*row)
        try:
            event = event.with_event_decoded()
        except UnreadableEvent as error:
            problems.append(
                Problem(seq, f"cannot be read back, its job is quarantined: {error.reason}")
            )
        for fold in folds:  # the folds quarantine what cannot be read, as the log's do
            try:
                fold.apply((event,))
            except ValueError as error:
                problems.append(Problem(seq, f"{fold.projection.name}: {error}"))
        if len(problems) >= limit:
            return problems
        if progress is not None and done % 20_000 == 0:
            progress(done, head_seq)
    if progress is not None:
        progress(head_seq, head_seq)
    for fold in folds:
        problems.extend(_compare(log, fold))
    return problems[:limit]


def _compare(log: EventLog, fold: Fold[Any]) -> list[Problem]:
    projection = fold.projection
    name = projection.name
    head_seq, head_hash = log.head()
    checkpoint = log.checkpoint(projection)
    if checkpoint is None:
        return [Problem(None, f"projection {name} has no checkpoint")]
    _version, seq, hash_ = checkpoint
    if (seq, hash_) != (head_seq, head_hash):
        if log.hash_at(seq) != hash_:
            return [
                Problem(
                    min(seq, head_seq + 1),
                    f"projection {name} was checkpointed at "
                    f"event {seq}, which the log does not hold as it was: events at "
                    "its end were removed or altered",
                )
            ]
        return [
            Problem(
                seq + 1,
                f"projection {name} is behind: checkpoint {seq}, log head "
                f"{head_seq} (it catches up when the log is next opened for writing)",
            )
        ]
    replayed = {key: state for key, state in fold.states.items() if state is not None}
    stored = projection.load_all(log.conn)
    problems = []
    for key in sorted(replayed.keys() | stored.keys()):
        if replayed.get(key) != stored.get(key):
            problems.append(
                Problem(
                    None,
                    f"projection {name}: {key} is stored as "
                    f"{stored.get(key)!r} but the events give "
                    f"{replayed.get(key)!r}",
                )
            )
    return problems
