"""The job queue against a naive reference: same pick, same position, every time."""

from __future__ import annotations

import copy
import itertools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from random import Random

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
    share_of,
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


# -- Tenants: fair order within a model's queue (ADR-0042) ---------------------------

TENANTS = [None, "acme", "bravo", "charlie"]
WEIGHTS = st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 7.0])
Group = tuple[int, str]
Line = tuple[int, str, str | None]


@dataclass
class NaiveFair:
    """The rule with tenants read straight off its statement: every job's tag worked
    out afresh from where its tenant's line starts, its place in the line, its share."""

    weight: Callable[[str | None], float]
    max_wait: float = MAX_WAIT
    jobs: dict[str, QueuedJob] = field(default_factory=dict)
    clock: dict[Group, int] = field(default_factory=dict)
    start: dict[Line, int] = field(default_factory=dict)
    share: dict[Line, int] = field(default_factory=dict)
    resume: dict[Line, int] = field(default_factory=dict)

    def push(self, job: QueuedJob) -> None:
        group, line = _group_of(job), _line_of(job)
        if not self._in(line):
            clock = self.clock.setdefault(group, 0)
            self.start[line] = max(clock, self.resume.pop(line, clock))
        self.share[line] = share_of(self.weight(job.tenant))
        self.jobs[job.job_id] = job

    def remove(self, job_id: str, *, served: bool = False) -> QueuedJob:
        job = self.jobs.pop(job_id)
        group, line = _group_of(job), _line_of(job)
        if served:
            self.clock[group] = max(self.clock[group], self.start[line])
            self.start[line] += self.share[line]
        if not self._in(line):
            self.resume[line] = self.start.pop(line)
        if not any(_group_of(j) == group for j in self.jobs.values()):
            del self.clock[group]
            self.resume = {k: v for k, v in self.resume.items() if k[:2] != group}
        return job

    def _in(self, line: Line) -> bool:
        return any(_line_of(job) == line for job in self.jobs.values())

    def tag(self, job: QueuedJob) -> int:
        line = _line_of(job)
        ahead = [j for j in self.jobs.values() if _line_of(j) == line and j.arrival < job.arrival]
        return self.start[line] + len(ahead) * self.share[line]

    def pick(self, loaded: str | None, now: float) -> QueuedJob | None:
        if not self.jobs:
            return None
        jobs = self.jobs.values()
        starving = [j for j in jobs if now - j.queued_at >= self.max_wait and not j.batch]
        if starving:
            group = _group_of(min(starving, key=lambda j: j.arrival))
        else:
            top = max(j.priority for j in jobs)
            level = [j for j in jobs if j.priority == top]
            same_model = [j for j in level if j.model_key == loaded]
            group = _group_of(min(same_model or level, key=lambda j: j.arrival))
        fair = [j for j in jobs if _group_of(j) == group]
        return self.remove(min(fair, key=lambda j: (self.tag(j), j.arrival)).job_id, served=True)


def _group_of(job: QueuedJob) -> Group:
    return job.priority, job.model_key


def _line_of(job: QueuedJob) -> Line:
    return job.priority, job.model_key, job.tenant


TenantStep = tuple[str, int, int, int, int]
TENANT_STEPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["push", "push", "push", "push", "pick", "pick", "remove", "retry", "weigh"]
        ),
        st.integers(0, 2),  # priority, or which job to remove
        st.integers(0, len(MODELS)),  # model, or which model is loaded (len: none)
        st.integers(0, len(TENANTS) - 1),
        st.integers(0, 30),  # how far the clock moves
    ),
    min_size=10,
    max_size=150,
)


@settings(max_examples=500, deadline=None)
@given(TENANT_STEPS, st.fixed_dictionaries({t: WEIGHTS for t in TENANTS}))
def test_with_tenants_the_queue_picks_exactly_as_the_naive_fair_rule(
    steps: list[TenantStep], weights: dict[str | None, float]
) -> None:
    queue = JobQueue(MAX_WAIT, weights.__getitem__)
    reference = NaiveFair(weights.__getitem__)
    picked: list[QueuedJob] = []
    now = 0.0
    for arrival, (op, small, model, tenant, tick) in enumerate(steps):
        now += tick / 10
        if op == "push":
            priority = PRIORITIES[small]
            job = QueuedJob(
                f"job-{arrival}", arrival, priority, MODELS[model % 3], now, TENANTS[tenant]
            )
            queue.push(job)
            reference.push(job)
        elif op == "remove" and reference.jobs:
            victim = sorted(reference.jobs)[small % len(reference.jobs)]
            assert queue.remove(victim) == reference.remove(victim)
        elif op == "retry" and picked:
            job = picked.pop(small % len(picked))
            queue.push(job)  # back for another attempt: its place in its tenant's line
            reference.push(job)
        elif op == "weigh":  # its limits changed: its next job queued says so
            weights[TENANTS[tenant]] = [0.5, 1.0, 4.0][small]
        elif op == "pick":
            loaded = MODELS[model] if model < len(MODELS) else None
            expected = reference.pick(loaded, now)
            assert queue.pick(loaded, now) == expected
            if expected is not None:
                picked.append(expected)
        assert len(queue) == len(reference.jobs)
        assert all(queue.waiting(t) == _waiting(reference, t) for t in TENANTS)


def _waiting(reference: NaiveFair, tenant: str | None) -> int:
    return sum(j.tenant == tenant and not j.batch for j in reference.jobs.values())


@settings(max_examples=200, deadline=None)
@given(STEPS, st.sampled_from(TENANTS), WEIGHTS)
def test_one_tenant_of_any_weight_is_served_in_the_old_order(
    steps: list[Step], tenant: str | None, weight: float
) -> None:
    """One tenant, or none: the fair order is the order of arrival, as before tenants."""
    queue = JobQueue(MAX_WAIT, lambda _tenant: weight)
    reference: dict[str, QueuedJob] = {}
    now = 0.0
    for arrival, (op, small, model, tick) in enumerate(steps):
        now += tick / 10
        if op == "push":
            job = QueuedJob(f"job-{arrival}", arrival, PRIORITIES[small], MODELS[model % 3], now)
            job = replace(job, tenant=tenant)
            queue.push(job)
            reference[job.job_id] = job
        elif op == "remove" and reference:
            victim = sorted(reference)[small % len(reference)]
            assert queue.remove(victim) == reference.pop(victim)
        elif op == "pick":
            loaded = MODELS[model] if model < len(MODELS) else None
            expected = naive_pick(reference, loaded, now)
            assert queue.pick(loaded, now) == expected
            if expected is not None:
                del reference[expected.job_id]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 400),  # A's jobs queued for the loaded model
    st.integers(0, 400),  # how many of them ran before B's job came
    st.lists(st.sampled_from(["acme", "charlie"]), max_size=40),  # others' jobs among A's
    st.fixed_dictionaries({t: WEIGHTS for t in TENANTS}),
    st.booleans(),  # whether every job has waited max_wait by then
)
def test_a_tenant_arriving_behind_a_backlog_waits_for_at_most_one_more_of_each_other(
    backlog: int,
    ran: int,
    others: list[str],
    weights: dict[str | None, float],
    starving: bool,
) -> None:
    """The bound of ADR-0042: B queues one job for the loaded model, where it had none;
    every other tenant then has at most one more job of that model picked before it,
    whatever the weights, and whether or not their jobs have waited ``max_wait`` (then
    an older job of another model may go first: rule 1 chooses the model)."""
    queue = JobQueue(MAX_WAIT, weights.__getitem__)
    loaded = MODELS[0]
    tenants = ["acme"] * backlog + others
    for arrival, tenant in enumerate(tenants):
        queue.push(QueuedJob(f"job-{arrival}", arrival, 0, loaded, 0.0, tenant))
    queue.push(QueuedJob("other-model", len(tenants), 0, MODELS[1], 0.0, "charlie"))
    now = 2 * MAX_WAIT if starving else 0.0
    for _ in range(min(ran, backlog - 1)):
        queue.pick(loaded, now)
    newcomer = QueuedJob("bravo", 10**6, 0, loaded, now, "bravo")
    queue.push(newcomer)
    before = Counter[str | None]()
    while (job := queue.pick(loaded, now)) != newcomer:
        assert job is not None
        before[job.tenant] += job.model_key == loaded
    assert max(before.values(), default=0) <= 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(WEIGHTS, min_size=2, max_size=4),
    st.integers(50, 400),  # jobs each tenant queues
    st.randoms(use_true_random=False),
)
def test_tenants_share_a_model_by_weight(weights: list[float], jobs: int, rng: Random) -> None:
    """Start-time fair queueing's bound for jobs of one size: while tenants i and j
    both have jobs queued, after any number of picks n_i/w_i and n_j/w_j are at most
    max(1/w_i, 1/w_j) apart; with two tenants, n_i is within one job of
    n * w_i / (w_i + w_j)."""
    tenants = [f"tenant-{i}" for i in range(len(weights))]
    weight = dict(zip(tenants, weights, strict=True))
    queue = JobQueue(MAX_WAIT, lambda t: weight[t or ""])
    order = [t for t in tenants for _ in range(jobs)]
    rng.shuffle(order)
    for arrival, tenant in enumerate(order):
        queue.push(QueuedJob(f"job-{arrival}", arrival, 0, MODELS[0], 0.0, tenant))
    picked = Counter[str | None]()
    slack = 1e-6  # shares are whole numbers: SHARE_SCALE / weight, rounded
    while all(picked[t] < jobs for t in tenants):
        job = queue.pick(MODELS[0], 0.0)
        assert job is not None
        picked[job.tenant] += 1
        for i, j in itertools.combinations(tenants, 2):
            gap = abs(picked[i] / weight[i] - picked[j] / weight[j])
            assert gap <= max(1 / weight[i], 1 / weight[j]) + slack
        if len(tenants) == 2:
            total, (first, second) = picked.total(), tenants
            due = total * weight[first] / (weight[first] + weight[second])
            assert abs(picked[first] - due) <= 1 + slack


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["push", "push", "push", "push", "remove", "take", "repush"]),
            st.integers(0, 2),  # priority, or which job to remove or push again
            st.integers(0, len(MODELS) - 1),
            st.integers(0, len(TENANTS) - 1),
        ),
        max_size=80,
    ),
    st.fixed_dictionaries({t: WEIGHTS for t in TENANTS}),
    st.sampled_from(LOADED),
    st.tuples(st.integers(0, 2), st.integers(0, len(MODELS) - 1), st.integers(0, 80)),
    st.integers(0, len(TENANTS) - 1),
)
def test_with_tenants_position_is_the_number_of_picks_before_the_job(
    steps: list[tuple[str, int, int, int]],
    weights: dict[str | None, float],
    loaded: str | None,
    outsider: tuple[int, int, int],
    outsider_tenant: int,
) -> None:
    queue = JobQueue(math.inf, weights.__getitem__)
    queued: dict[str, QueuedJob] = {}
    removed: list[QueuedJob] = []
    for arrival, (op, small, model, tenant) in enumerate(steps):
        if op == "push":
            job = QueuedJob(f"job-{arrival}", 2 * arrival, PRIORITIES[small], MODELS[model], 0.0)
            queued[job.job_id] = replace(job, tenant=TENANTS[tenant])
            queue.push(queued[job.job_id])
        elif op in ("remove", "take") and queued:
            victim = sorted(queued)[small % len(queued)]
            removed.append(queued.pop(victim))
            gone = queue.remove(victim) if op == "remove" else queue.take(victim)
            assert gone == removed[-1]
        elif op == "repush" and removed:
            job = removed.pop(small % len(removed))
            queued[job.job_id] = job
            queue.push(job)
    order = _picks(queue, loaded)
    assert sorted(job.job_id for job in order) == sorted(queued)
    for index, job in enumerate(order):
        assert queue.position(job, loaded) == index
    # A job not queued (say, waiting out a backoff): where it would stand if pushed now.
    priority, model, arrival = outsider
    job = QueuedJob(
        "outsider", 2 * arrival + 1, PRIORITIES[priority], MODELS[model], 0.0,
        TENANTS[outsider_tenant],
    )  # fmt: skip
    for candidate in [job, *removed]:
        assert candidate not in queue
        pushed = copy.deepcopy(queue)
        pushed.push(candidate)
        assert queue.position(candidate, loaded) == _picks(pushed, loaded).index(candidate)


def _picks(queue: JobQueue, loaded: str | None) -> list[QueuedJob]:
    """Every job of (a copy of) ``queue`` in the order the rule picks them, if none
    arrives and none starves."""
    queue, order = copy.deepcopy(queue), []
    while (job := queue.pick(loaded, 0.0)) is not None:
        order.append(job)
        loaded = job.model_key
    return order


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2), st.integers(0, len(MODELS) - 1), st.integers(0, len(TENANTS) - 1)
        ),
        max_size=60,
    ),
    st.sets(st.sampled_from(TENANTS)),
    st.sampled_from(LOADED),
    st.sampled_from(LOADED),
    st.dictionaries(st.sampled_from(MODELS), st.integers(0, 2)),
)
def test_a_host_passes_over_the_batch_lines_of_tenants_held_back(
    pushes: list[tuple[int, int, int]],
    held_back: set[str | None],
    loaded: str | None,
    resume: str | None,
    elsewhere: dict[str, int],
) -> None:
    """Held back (their ``batch_share`` is in use), a tenant's lines are as if not
    queued: the host takes what it would take without them."""
    queue = JobQueue(MAX_WAIT)
    jobs = [
        QueuedJob(f"job-{n}", n, PRIORITIES[priority], MODELS[model], 0.0, TENANTS[tenant])
        for n, (priority, model, tenant) in enumerate(pushes)
    ]
    for job in jobs:
        queue.push(job)
    without = copy.deepcopy(queue)
    for job in jobs:
        if job.batch and job.tenant in held_back:
            without.remove(job.job_id)
    host = HostView(loaded, elsewhere=elsewhere, resume=resume)
    assert queue.peek_for(replace(host, held_back=held_back), 0.0) == without.peek_for(host, 0.0)


def test_a_new_weight_counts_from_the_tenants_next_job_queued() -> None:
    weights = {"a": 1.0, "b": 1.0}
    queue = JobQueue(MAX_WAIT, weights.__getitem__)
    for arrival, tenant in enumerate("aabb"):
        queue.push(QueuedJob(f"{tenant}{arrival}", arrival, 0, MODELS[0], 0.0, tenant))
    weights["a"] = 0.25
    queue.push(QueuedJob("a4", 4, 0, MODELS[0], 0.0, "a"))
    picks = [queue.pick(MODELS[0], 0.0) for _ in range(5)]
    assert [job.job_id for job in picks if job] == ["a0", "b2", "b3", "a1", "a4"]
