"""The job queue against a naive reference: same pick, same position, every time."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.actors.worker import Took
from foreman.scheduling import (
    BATCH_PRIORITY,
    Costs,
    HostView,
    JobQueue,
    QueuedJob,
    model_key,
    model_name,
    model_of,
)

MAX_WAIT = 10.0
MODELS = ["llama3:latest", "qwen2:latest", 'llama3:latest {"num_ctx": 8192}']
PRIORITIES = [BATCH_PRIORITY, 0, 1]
"""What the tests' priority indexes stand for: a batch's lines, and two others."""


def naive_pick(
    jobs: dict[str, QueuedJob], loaded: str | None, now: float, max_wait: float = MAX_WAIT
) -> QueuedJob | None:
    if not jobs:
        return None
    starving = [j for j in jobs.values() if now - j.queued_at >= max_wait and not j.batch]
    if starving:
        return min(starving, key=lambda j: j.arrival)
    top = max(j.priority for j in jobs.values())
    candidates = [j for j in jobs.values() if j.priority == top]
    same_model = [j for j in candidates if j.model_key == loaded]
    return min(same_model or candidates, key=lambda j: j.arrival)


Step = tuple[str, int, int, int]
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["push", "push", "push", "pick", "pick", "remove", "retry"]),
        st.integers(0, 2),  # priority, or which job to remove
        st.integers(0, len(MODELS)),  # model, or which model is loaded (len: none)
        st.integers(0, 30),  # how far the clock moves
    ),
    max_size=80,
)


@settings(max_examples=300)
@given(STEPS)
def test_the_queue_picks_exactly_as_the_naive_rule(steps: list[Step]) -> None:
    queue = JobQueue(MAX_WAIT)
    reference: dict[str, QueuedJob] = {}
    picked: list[QueuedJob] = []
    now = 0.0
    for arrival, (op, small, model, tick) in enumerate(steps):
        now += tick / 10
        if op == "push":
            priority = PRIORITIES[small]
            job = QueuedJob(f"job-{arrival}", arrival, priority, MODELS[model % 3], queued_at=now)
            queue.push(job)
            reference[job.job_id] = job
        elif op == "remove" and reference:
            victim = sorted(reference)[small % len(reference)]
            assert queue.remove(victim) == reference.pop(victim)
        elif op == "retry" and picked:
            job = picked.pop()
            queue.push(job)  # back in the queue, keeping its place
            reference[job.job_id] = job
        elif op == "pick":
            loaded = MODELS[model] if model < len(MODELS) else None
            expected = naive_pick(reference, loaded, now)
            assert queue.pick(loaded, now) == expected
            if expected is not None:
                del reference[expected.job_id]
                picked.append(expected)
        assert len(queue) == len(reference)


def naive_order(jobs: dict[str, QueuedJob], loaded: str | None) -> list[QueuedJob]:
    """Every job in the order the rule runs them, if none arrives and none starves."""
    jobs, order = dict(jobs), []
    while (job := naive_pick(jobs, loaded, 0.0, max_wait=math.inf)) is not None:
        order.append(jobs.pop(job.job_id))
        loaded = job.model_key
    return order


LOADED = [*MODELS, None, "mistral:latest"]  # the last: a model no job asks for


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["push", "push", "push", "remove", "repush"]),
            st.integers(0, 2),  # priority, or which job to remove or push again
            st.integers(0, len(MODELS) - 1),
        ),
        max_size=60,
    ),
    st.sampled_from(LOADED),
    st.tuples(st.integers(0, 2), st.integers(0, len(MODELS) - 1), st.integers(0, 60)),
)
def test_position_is_the_index_in_the_naive_order(
    steps: list[tuple[str, int, int]], loaded: str | None, outsider: tuple[int, int, int]
) -> None:
    queue = JobQueue(math.inf)
    reference: dict[str, QueuedJob] = {}
    removed: list[QueuedJob] = []
    for arrival, (op, small, model) in enumerate(steps):
        if op == "push":
            priority = PRIORITIES[small]
            job = QueuedJob(f"job-{arrival}", 2 * arrival, priority, MODELS[model], float(arrival))
            queue.push(job)
            reference[job.job_id] = job
        elif op == "remove" and reference:
            victim = sorted(reference)[small % len(reference)]
            removed.append(reference.pop(victim))
            assert queue.remove(victim) == removed[-1]
        elif op == "repush" and removed:
            job = removed.pop(small % len(removed))
            queue.push(job)  # back in the queue, keeping its place
            reference[job.job_id] = job
    order = naive_order(reference, loaded)
    for index, job in enumerate(order):
        assert queue.get(job.job_id) == job
        assert queue.position(job, loaded) == index
    # A job not queued (say, waiting out a backoff): where it would stand if pushed now.
    priority, model, arrival = outsider
    outside = PRIORITIES[priority]
    job = QueuedJob("outsider", 2 * arrival + 1, outside, MODELS[model], float(arrival))
    assert queue.get(job.job_id) is None
    expected = naive_order({**reference, job.job_id: job}, loaded).index(job)
    assert queue.position(job, loaded) == expected
    assert len(queue) == len(reference)


def naive_pick_for(
    jobs: dict[str, QueuedJob], host: HostView, now: float, max_wait: float = MAX_WAIT
) -> QueuedJob | None:
    """The fleet rule, read straight off its statement (ADR-0035)."""
    runnable = [j for j in jobs.values() if host.can_run(j.model)]
    if not runnable:
        return None
    starving = [j for j in runnable if now - j.queued_at >= max_wait and not j.batch]
    if starving:
        return min(starving, key=lambda j: j.arrival)
    for priority in sorted({j.priority for j in runnable}, reverse=True):
        level = [j for j in runnable if j.priority == priority]
        same_model = [j for j in level if j.model_key == host.loaded]
        if priority == BATCH_PRIORITY and not same_model and not host.elsewhere.get(host.resume):
            same_model = [j for j in level if j.model_key == host.resume]
        unserved = [j for j in level if not host.elsewhere.get(j.model_key)]
        shared = [
            j
            for j in level
            if host.elsewhere.get(j.model_key)
            and host.worth_sharing(j.model_key, host.elsewhere[j.model_key])
        ]
        chosen = same_model or unserved or shared
        if chosen:
            return min(chosen, key=lambda j: j.arrival)
    return None


NAMES = [*sorted({model_of(key) for key in MODELS}), "mistral:latest"]


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, len(MODELS) - 1), st.integers(0, 30))),
    st.sampled_from(LOADED),
    st.sets(st.sampled_from(NAMES)),
    st.dictionaries(st.sampled_from(MODELS), st.integers(0, 2)),
    st.sets(st.sampled_from(MODELS)),
    st.integers(0, 60),
    st.sampled_from(LOADED),
)
def test_a_fleet_host_picks_exactly_as_the_naive_fleet_rule(
    pushes: list[tuple[int, int, int]],
    loaded: str | None,
    cannot_run: set[str],
    elsewhere: dict[str, int],
    worth_sharing: set[str],
    now: int,
    resume: str | None,
) -> None:
    queue = JobQueue(MAX_WAIT)
    jobs: dict[str, QueuedJob] = {}
    queued_at = 0.0  # grows with arrival, as QueuedJob requires
    for arrival, (priority, model, tick) in enumerate(pushes):
        queued_at += tick / 4
        job = QueuedJob(f"job-{arrival}", arrival, PRIORITIES[priority], MODELS[model], queued_at)
        queue.push(job)
        jobs[job.job_id] = job
    host = HostView(
        loaded,
        lambda model: model not in cannot_run,
        elsewhere,
        lambda key, _hosts: key in worth_sharing,
        resume,
    )
    assert queue.peek_for(host, now) == naive_pick_for(jobs, host, now)
    # A host alone, able to run everything and with no batch to resume, follows the
    # one-host rule.
    assert queue.peek_for(HostView(loaded), now) == queue.peek(loaded, now)


def test_a_job_cannot_be_queued_twice() -> None:
    queue = JobQueue(MAX_WAIT)
    job = QueuedJob("a", 1, 0, "m:latest", 0.0)
    queue.push(job)
    with pytest.raises(ValueError, match="already queued"):
        queue.push(job)


def test_model_keys_follow_what_makes_ollama_reload() -> None:
    assert model_name("llama3") == "llama3:latest"
    assert model_name("library/llama3:8b") == "library/llama3:8b"
    assert model_name("registry.local:5000/llama3") == "registry.local:5000/llama3:latest"
    assert model_key("llama3") == model_key("llama3:latest", {"temperature": 0.1})
    assert model_key("llama3", {"num_ctx": 4096}) != model_key("llama3")
    assert model_key("llama3", {"num_ctx": 4096, "seed": 1}) == model_key(
        "llama3:latest", {"num_ctx": 4096}
    )


def test_sharing_a_backlog_is_worth_it_when_it_saves_more_than_a_load() -> None:
    costs = Costs()
    costs.observe("m", run=0.5, load=0.2)  # the first measurements replace the defaults
    assert (costs.job("m"), costs.load) == (0.5, 0.2)
    # 10 jobs of 0.5 s on 1 host: a second host saves 5/(1*2) = 2.5 s > 0.2 s
    assert costs.worth_sharing(10, "m", hosts=1)
    # 1 job on 1 host: 0.5/2 = 0.25 s > 0.2 s; on 2 hosts: 0.5/6 < 0.2 s
    assert costs.worth_sharing(1, "m", hosts=1)
    assert not costs.worth_sharing(1, "m", hosts=2)
    costs.observe("m", run=1.5)  # then a running average
    assert costs.job("m") == 0.8 * 0.5 + 0.2 * 1.5


def test_a_calls_time_is_read_from_ollamas_durations() -> None:
    answer = {"eval_duration": 400_000_000, "prompt_eval_duration": 100_000_000}
    assert Took.of(answer | {"load_duration": 0}) == Took(0.5, None)
    assert Took.of(answer | {"load_duration": 2_000_000_000}) == Took(0.5, 2.0)
    assert Took.of({"embeddings": [[0.1]]}) is None
