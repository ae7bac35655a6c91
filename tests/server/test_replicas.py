"""The promises across processes: real `sendonce-server` replicas on a shared Redis, a replica
killed with SIGKILL mid-attempt, a restart on the same SQLite file, and Redis going away during a
storm. Every delivery is counted by a real HTTP receiver from the request bodies it got.

Nothing here sleeps to synchronise: the tests await receiver hits, log lines, process exits and
health Watch streams. The only sleeps are a caller honouring a `retry_after` of a few
milliseconds, as a controller would.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
from google.protobuf.duration_pb2 import Duration

from sendonce.v1 import delivery_pb2 as pb
from tests.server.process import NOT_SERVING, SERVING, Children, HealthWatch, Sidecar
from tests.support.http_receiver import HttpReceiver, Reply
from tests.support.redis_server import RedisServer

if TYPE_CHECKING:  # the async stub exists in the .pyi only
    from sendonce.v1.delivery_pb2_grpc import DeliveryServiceAsyncStub

SERVICE = "sendonce.v1.DeliveryService"
NOTE = pb.Notification(subject="Backup of db-0 failed", body="exit status 3")
DELIVERED = pb.OUTCOME_DELIVERED
ALREADY = pb.OUTCOME_ALREADY_DELIVERED
SETTLED = frozenset({DELIVERED, ALREADY})
RUNNING = pb.ATTEMPT_RESULT_RUNNING
SUCCEEDED = pb.ATTEMPT_RESULT_SUCCEEDED
FAILED = pb.ATTEMPT_RESULT_FAILED
ABANDONED = pb.ATTEMPT_RESULT_ABANDONED
# A loop over one key gives up after this many calls: a storm must end, one way or the other.
MAX_CALLS_PER_KEY = 200
STORM_TIMEOUT = 40.0


@pytest_asyncio.fixture
async def children() -> AsyncIterator[Children]:
    async with Children() as started:
        yield started


@dataclass(frozen=True)
class Hook:
    """A `webhook` receiver of the receivers file; `retry` is a TOML inline table's content."""

    url: str
    timeout: float = 10.0
    retry: str = ""


def receivers_file(directory: Path, **hooks: Hook) -> Path:
    lines = []
    for name, hook in hooks.items():
        lines += [
            "[[receivers]]",
            f'name = "{name}"',
            'type = "webhook"',
            # Off: a breaker belongs to one process and would answer CIRCUIT_OPEN (using no
            # attempt) to the failing receivers; these tests are about the shared state.
            "breaker = { failures = 0 }",
            f'settings = {{ url = "{hook.url}", timeout = {hook.timeout} }}',
        ]
        if hook.retry:
            lines.append(f"retry = {{ {hook.retry} }}")
    path = directory / "receivers.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def deliver(
    uid: str, channel: str = "hook", policy: pb.RetryPolicy | None = None
) -> pb.DeliverRequest:
    return pb.DeliverRequest(uid=uid, channel=channel, notification=NOTE, retry_policy=policy)


async def state(
    stub: DeliveryServiceAsyncStub, uid: str, channel: str = "hook"
) -> pb.AttemptCountResponse:
    return await stub.AttemptCount(pb.AttemptCountRequest(uid=uid, channel=channel), timeout=10)


def results(answer: pb.AttemptCountResponse) -> list[int]:
    return [attempt.result for attempt in answer.history]


def sent_attempts(receiver: HttpReceiver) -> dict[str, list[int]]:
    """The attempt numbers the receiver got, per uid, in order of arrival."""
    sent: dict[str, list[int]] = defaultdict(list)
    for request in receiver.requests:
        body = request.json()
        sent[body["uid"]].append(body["attempt"])
    return dict(sent)


def seconds(duration: Duration) -> float:
    return float(duration.ToTimedelta().total_seconds())


def warnings(replicas: Sequence[Sidecar]) -> str:
    """The replicas' warning and error lines, to explain a failed assertion."""
    levels = (" WARNING ", " ERROR ", "Error")
    return "\n".join(
        line
        for replica in replicas
        for line in replica.stderr.lines
        if any(level in line for level in levels)
    )


async def start_replicas(children: Children, count: int, *args: str) -> list[Sidecar]:
    return list(await asyncio.gather(*(children.replica(*args) for _ in range(count))))


async def stubs_of(
    stack: AsyncExitStack, replicas: Sequence[Sidecar]
) -> list[DeliveryServiceAsyncStub]:
    return [await stack.enter_async_context(replica.stub()) for replica in replicas]


@dataclass
class Storm:
    """Callers hammering Deliver, each calling for its share of the keys until the key's answer
    is in `done`. What each call answered is kept per key.

    A caller takes `keys_per_caller` keys at random (and every key has at least one caller) and
    goes through them in the keys' order: callers on every replica run into each other on the
    same keys at the same time, which is the point, and the storm stays a few thousand calls.
    """

    uids: Sequence[str]
    request: Callable[[str], pb.DeliverRequest]
    done: Collection[int]
    callers_per_stub: int = 30
    keys_per_caller: int = 25
    # Awaited after an UNAVAILABLE (with the stub's index) before the call is made again.
    on_unavailable: Callable[[int], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        self.answers: dict[str, list[pb.DeliverResponse]] = defaultdict(list)
        self.unavailable: list[str] = []

    async def run(self, stubs: Sequence[DeliveryServiceAsyncStub]) -> None:
        callers = len(stubs) * self.callers_per_stub
        async with asyncio.timeout(STORM_TIMEOUT), asyncio.TaskGroup() as group:
            for number in range(callers):
                rng = random.Random(number)
                share = set(rng.sample(range(len(self.uids)), self.keys_per_caller))
                share.update(range(number, len(self.uids), callers))
                uids = [self.uids[index] for index in sorted(share)]
                index = number % len(stubs)
                group.create_task(self._caller(index, stubs[index], uids))

    async def _caller(
        self, index: int, stub: DeliveryServiceAsyncStub, uids: Sequence[str]
    ) -> None:
        for uid in uids:
            await self._until_done(index, stub, uid)

    async def _until_done(self, index: int, stub: DeliveryServiceAsyncStub, uid: str) -> None:
        answer = None
        for _ in range(MAX_CALLS_PER_KEY):
            try:
                answer = await stub.Deliver(self.request(uid), timeout=10)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or self.on_unavailable is None:
                    raise
                self.unavailable.append(error.details() or "")
                await self.on_unavailable(index)
                continue
            self.answers[uid].append(answer)
            if answer.outcome in self.done:
                return
            if answer.outcome == pb.OUTCOME_RETRY_LATER and answer.HasField("retry_after"):
                await asyncio.sleep(min(seconds(answer.retry_after), 0.1))  # a caller's backoff
        raise AssertionError(f"{uid}: not done after {MAX_CALLS_PER_KEY} calls: {answer}")


# --- replica storm ------------------------------------------------------------------------------


async def test_a_replica_storm_delivers_each_key_once_and_spends_each_budget_once(
    children: Children, tmp_path: Path, own_redis: RedisServer
) -> None:
    async with HttpReceiver() as receiver, AsyncExitStack() as stack:
        config = receivers_file(tmp_path, hook=Hook(receiver.url))
        replicas = await start_replicas(
            children, 3, "--config", str(config), "--store", own_redis.url
        )
        stubs = await stubs_of(stack, replicas)

        # A receiver that succeeds: 3 replicas x 30 callers x 100 keys, one delivery per key.
        delivered = [f"ok-{n:03}" for n in range(100)]
        storm = Storm(delivered, deliver, SETTLED)
        await storm.run(stubs)
        assert sent_attempts(receiver) == {uid: [1] for uid in delivered}
        for uid in delivered:
            owners = [a for a in storm.answers[uid] if a.outcome == DELIVERED and not a.shared]
            assert len(owners) == 1, (uid, storm.answers[uid])
            assert {a.attempt for a in storm.answers[uid]} == {1}
        for stub in stubs:
            states = await asyncio.gather(*(state(stub, uid) for uid in delivered))
            assert {(s.succeeded, s.attempts_used, tuple(results(s))) for s in states} == {
                (True, 1, (SUCCEEDED,))
            }

        # A receiver that always fails: callers loop (with persisted_attempts 0, as a stale
        # controller would) until EXHAUSTED. Every budget is spent, none is overspent.
        receiver.respond(500)
        hits_before = receiver.hits
        policy = pb.RetryPolicy(max_attempts=5, initial_backoff=Duration(nanos=1_000_000), jitter=0)
        failing = [f"fail-{n:03}" for n in range(100)]
        storm = Storm(failing, lambda uid: deliver(uid, policy=policy), {pb.OUTCOME_EXHAUSTED})
        await storm.run(stubs)
        sent = sent_attempts(receiver)
        assert receiver.hits - hits_before == 5 * len(failing)
        assert {uid: sorted(sent[uid]) for uid in failing} == {
            uid: [1, 2, 3, 4, 5] for uid in failing
        }
        outcomes = {a.outcome for answers in storm.answers.values() for a in answers}
        assert outcomes <= {
            pb.OUTCOME_FAILED,
            pb.OUTCOME_RETRY_LATER,
            pb.OUTCOME_IN_PROGRESS,
            pb.OUTCOME_EXHAUSTED,
        }
        for stub in stubs:
            states = await asyncio.gather(*(state(stub, uid) for uid in failing))
            assert {
                (s.final, s.succeeded, s.attempts_used, s.remaining, tuple(results(s)))
                for s in states
            } == {(True, False, 5, 0, (FAILED,) * 5)}

        # A receiver that fails each key's first attempt, slowly (callers on the other replicas
        # wait on it), and takes the second at once (it may succeed before a waiter reads the
        # first's failure): every answer tells one state, a delivered key is never answered
        # FAILED, and no answer is final unless the key is delivered.
        receiver.respond_with(
            lambda request: Reply(500, delay=0.05) if request.json()["attempt"] == 1 else 200
        )
        hits_before = receiver.hits
        recovering = [f"flaky-{n:03}" for n in range(100)]
        storm = Storm(recovering, lambda uid: deliver(uid, policy=policy), SETTLED)
        await storm.run(stubs)
        sent = sent_attempts(receiver)
        assert receiver.hits - hits_before == 2 * len(recovering)
        assert {uid: sorted(sent[uid]) for uid in recovering} == {uid: [1, 2] for uid in recovering}
        for uid in recovering:
            for answer in storm.answers[uid]:
                settled = answer.outcome in SETTLED
                assert answer.final == settled, (uid, answer)
                assert answer.HasField("receipt") == settled, (uid, answer)
                assert (answer.last_error == "") == settled, (uid, answer)
                assert answer.attempt <= answer.attempts_used <= 2, (uid, answer)
                if answer.outcome == DELIVERED:
                    assert answer.attempt == 2, (uid, answer)


# --- a replica killed mid-attempt ---------------------------------------------------------------


async def test_a_replica_killed_mid_attempt_leaves_it_counted_and_another_replica_goes_on(
    children: Children, tmp_path: Path, own_redis: RedisServer
) -> None:
    uid = "crash-1"
    async with HttpReceiver() as receiver, AsyncExitStack() as stack:
        # A lease of timeout + margin = 3 s: long enough for the IN_PROGRESS check below on a
        # busy machine, short enough to wait out.
        config = receivers_file(tmp_path, hook=Hook(receiver.url, timeout=2))
        args = ("--config", str(config), "--store", own_redis.url, "--lease-margin", "1")
        a, b, c = await start_replicas(children, 3, *args)
        on_a, on_b, on_c = await stubs_of(stack, [a, b, c])
        receiver.hold()

        first = asyncio.ensure_future(on_a.Deliver(deliver(uid), timeout=30))
        await receiver.wait_for_hits(1)
        await a.kill()
        with pytest.raises(grpc.aio.AioRpcError) as lost:
            await first
        running = await state(on_c, uid)
        waiting = await on_b.Deliver(deliver(uid), timeout=1)
        hits_while_live = receiver.hits

        # B waits for the dead holder's lease to expire, then reserves attempt 2 (held too).
        retry = asyncio.ensure_future(on_b.Deliver(deliver(uid), timeout=20))
        await receiver.wait_for_hits(2)
        during = await state(on_c, uid)
        receiver.release()
        answer = await retry
        after = await state(on_c, uid)

        # A restarted, B and C: the recorded success ends it, whoever is asked.
        restarted = await children.replica(*args)
        on_restarted = await stack.enter_async_context(restarted.stub())
        later = [
            await stub.Deliver(deliver(uid), timeout=10) for stub in (on_restarted, on_b, on_c)
        ]

    assert a.process.returncode == -signal.SIGKILL
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (running.in_flight, running.attempts_used, results(running)) == (True, 1, [RUNNING])
    assert (waiting.outcome, waiting.attempt, waiting.attempts_used) == (
        pb.OUTCOME_IN_PROGRESS,
        1,
        1,
    )
    assert 0 < seconds(waiting.retry_after) <= 1
    assert hits_while_live == 1
    # The abandoned attempt stays counted while the retry runs, and after it.
    assert (during.in_flight, during.attempts_used, results(during)) == (
        True,
        2,
        [ABANDONED, RUNNING],
    )
    assert (answer.outcome, answer.attempt, answer.attempts_used) == (DELIVERED, 2, 2)
    assert (after.succeeded, after.attempts_used, results(after)) == (
        True,
        2,
        [ABANDONED, SUCCEEDED],
    )
    assert [(x.outcome, x.attempt) for x in later] == [(ALREADY, 2)] * 3
    # Two sends, one per attempt, under one idempotency key the receiver can dedupe by.
    assert receiver.hits == 2
    assert sent_attempts(receiver) == {uid: [1, 2]}
    assert len({request.headers["webhook-id"] for request in receiver.requests}) == 1


# --- a restart on the same SQLite file ----------------------------------------------------------


async def test_a_sidecar_killed_and_restarted_on_its_sqlite_file_keeps_every_promise(
    children: Children, tmp_path: Path
) -> None:
    async with (
        HttpReceiver() as ok,
        HttpReceiver(500) as flaky,
        HttpReceiver() as slow,
        AsyncExitStack() as stack,
    ):
        config = receivers_file(
            tmp_path,
            ok=Hook(ok.url),
            flaky=Hook(flaky.url, retry="initial_backoff = 0.0, jitter = 0.0"),
            slow=Hook(slow.url, timeout=2),
        )
        store = f"sqlite://{tmp_path}/state.db"
        args = ("--config", str(config), "--store", store, "--lease-margin", "1")
        first = await children.replica(*args)
        stub = await stack.enter_async_context(first.stub())
        keys = [("d-1", "ok"), ("d-2", "ok"), ("c-1", "ok"), ("f-1", "flaky"), ("f-2", "flaky")]
        before_kill = [
            await stub.Deliver(deliver(uid, channel), timeout=10)
            for uid, channel in [*keys, ("f-1", "flaky"), ("f-2", "flaky"), ("f-2", "flaky")]
        ]
        cleared = await stub.Clear(pb.ClearRequest(uid="c-1"), timeout=10)
        slow.hold()
        hung = asyncio.ensure_future(stub.Deliver(deliver("h-1", "slow"), timeout=30))
        await slow.wait_for_hits(1)
        keys.append(("h-1", "slow"))
        saved = {key: await state(stub, *key) for key in keys}
        await first.kill()
        with pytest.raises(grpc.aio.AioRpcError):
            await hung
        slow.release()  # the held request's connection died with the sidecar
        hits = (ok.hits, flaky.hits, slow.hits)

        second = await children.replica(*args)
        stub = await stack.enter_async_context(second.stub())
        restored = {key: await state(stub, *key) for key in keys}
        again_delivered = await stub.Deliver(deliver("d-1", "ok"), timeout=10)
        again_cleared = await stub.Deliver(deliver("c-1", "ok"), timeout=10)
        again_failed = await stub.Deliver(deliver("f-2", "flaky"), timeout=10)
        hits_after = (ok.hits, flaky.hits)
        # Waits out the dead holder's lease, then attempt 2 goes through.
        retried = await stub.Deliver(deliver("h-1", "slow"), timeout=20)
        hung_after = await state(stub, "h-1", "slow")
        code = await second.terminate()

    assert first.process.returncode == -signal.SIGKILL
    assert [a.outcome for a in before_kill] == [DELIVERED] * 3 + [pb.OUTCOME_FAILED] * 5
    assert list(cleared.cleared_channels) == ["ok"]
    assert hits == (3, 5, 1)
    # Attempts, successes, failures and the tombstone are as the killed sidecar left them.
    for key in keys[:-1]:
        for answer in (saved[key], restored[key]):
            answer.ClearField("retry_after")
        assert restored[key] == saved[key], key
    assert [restored[k].attempts_used for k in keys] == [1, 1, 1, 2, 3, 1]
    assert (restored["c-1", "ok"].cleared, restored["c-1", "ok"].succeeded) == (True, True)
    assert results(restored["f-2", "flaky"]) == [FAILED] * 3
    # The reservation was on disk before the send: the hung attempt is there, counted.
    hung_before, hung_now = saved["h-1", "slow"], restored["h-1", "slow"]
    assert (hung_before.in_flight, results(hung_before)) == (True, [RUNNING])
    assert hung_now.attempts_used == 1
    assert hung_now.history[0].start_time == hung_before.history[0].start_time
    assert results(hung_now) in ([RUNNING], [ABANDONED])
    # Delivered and tombstoned keys send nothing more; the failed key goes on where it was.
    assert (again_delivered.outcome, again_delivered.attempt) == (ALREADY, 1)
    assert (again_cleared.outcome, again_cleared.attempt) == (ALREADY, 1)
    assert (again_failed.outcome, again_failed.attempt) == (pb.OUTCOME_FAILED, 4)
    assert hits_after == (3, 6)
    assert (retried.outcome, retried.attempt, retried.attempts_used) == (DELIVERED, 2, 2)
    assert results(hung_after) == [ABANDONED, SUCCEEDED]
    assert sent_attempts(slow) == {"h-1": [1, 2]}
    assert code == 0


# --- Redis goes away during a storm -------------------------------------------------------------


async def test_a_redis_outage_during_a_storm_sends_nothing_unreserved_and_the_storm_completes(
    children: Children, tmp_path: Path, durable_redis: RedisServer
) -> None:
    """Redis here logs every write with fsync before answering (appendonly, appendfsync always),
    so what it acknowledged survives the kill and the checks below see every reservation. A
    Redis without persistence comes back empty and would forget what it had reserved.

    "At most one send per key" does not hold for an attempt in flight when Redis dies: its
    result cannot be recorded, its lease expires (ABANDONED) and the key is sent again under
    the same webhook-id, the documented outcome-unknown case. So every key is checked for: each
    request matches a reserved attempt, no attempt is sent twice, nothing is sent after the
    recorded success, and a key with no abandoned attempt got exactly one request. An attempt is
    held in the receiver across the outage so that case is always exercised."""
    uids = [f"storm-{n:03}" for n in range(120)]
    policy = pb.RetryPolicy(initial_backoff=Duration(nanos=10_000_000), jitter=0)
    async with HttpReceiver() as receiver, AsyncExitStack() as stack:
        config = receivers_file(tmp_path, hook=Hook(receiver.url, timeout=2))
        replicas = await start_replicas(
            children,
            3,
            *("--config", str(config), "--store", durable_redis.url),
            *("--store-check-interval", "0.1", "--lease-margin", "1"),
        )
        stubs = await stubs_of(stack, replicas)
        # The delivery service's health (readiness) follows the store; "" (liveness) does not.
        healths = [
            await stack.enter_async_context(HealthWatch(replica.target, SERVICE))
            for replica in replicas
        ]
        liveness = [
            await stack.enter_async_context(HealthWatch(replica.target)) for replica in replicas
        ]

        async def until_store_is_back(index: int) -> None:
            down = await healths[index].reached(NOT_SERVING, timeout=30)
            await healths[index].reached(SERVING, after=down, timeout=30)

        storm = Storm(
            uids,
            lambda uid: deliver(uid, policy=policy),
            SETTLED,
            callers_per_stub=10,
            on_unavailable=until_store_is_back,
        )
        running = asyncio.create_task(storm.run(stubs))

        # Mid-storm, with attempts in flight in the receiver: Redis dies (SIGKILL).
        await receiver.wait_for_hits(len(uids) // 4)
        receiver.hold()
        await receiver.wait_for_hits(receiver.hits + 1)
        in_flight = {request.json()["uid"] for request in receiver.requests[-1:]}
        await asyncio.to_thread(durable_redis.stop)
        down = [await health.reached(NOT_SERVING) for health in healths]
        # The held attempts finish now: their results cannot be recorded.
        receiver.release()
        probes = []
        for n, stub in enumerate(stubs):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Deliver(deliver(f"probe-{n}"), timeout=10)
            probes.append(refused.value)

        await asyncio.to_thread(durable_redis.start)
        up = [await health.reached(SERVING, after=1) for health in healths]
        await running
        # A last pass, as a controller whose stale cache never saw those DELIVERED answers.
        final = Storm(uids, lambda uid: deliver(uid, policy=policy), SETTLED, callers_per_stub=1)
        await final.run(stubs[:1])
        answers = await asyncio.gather(*(state(stubs[0], uid) for uid in uids))
        states = dict(zip(uids, answers, strict=True))
        probe_states = [await state(stub, f"probe-{n}") for n, stub in enumerate(stubs)]
        statuses = [list(health.statuses) for health in healths]
        alive = [list(health.statuses) for health in liveness]

    assert (down, up) == ([1, 1, 1], [2, 2, 2])
    assert statuses == [[SERVING, NOT_SERVING, SERVING]] * 3, warnings(replicas)
    assert alive == [[SERVING]] * 3
    assert [probe.code() for probe in probes] == [grpc.StatusCode.UNAVAILABLE] * 3
    assert all("nothing sent" in (probe.details() or "") for probe in probes)
    assert storm.unavailable, "the storm never met the outage"
    # Reads never fabricate state: the refused probes left no record.
    assert [p.found for p in probe_states] == [False] * 3
    sent = sent_attempts(receiver)
    assert not any(uid.startswith("probe-") for uid in sent)
    abandoned = set()
    for uid in uids:
        key = states[uid]
        history = results(key)
        assert (key.succeeded, history[-1]) == (True, SUCCEEDED), (uid, key)
        assert set(history[:-1]) <= {ABANDONED}, (uid, key)
        assert key.attempts_used == len(history) <= 5
        # No send without a reservation, no reservation sent twice, nothing after the success.
        reserved = [attempt.number for attempt in key.history]
        assert sorted(set(sent[uid])) == sorted(sent[uid]), (uid, sent[uid])
        assert set(sent[uid]) <= set(reserved), (uid, sent[uid], reserved)
        assert max(sent[uid]) == key.history[-1].number, (uid, sent[uid], reserved)
        if ABANDONED in history:
            abandoned.add(uid)
        else:
            assert sent[uid] == [key.history[-1].number], (uid, sent[uid])
    # Only attempts whose result Redis could not record were retried (outcome unknown), under
    # the same idempotency key. The attempt held across the outage had its result recorded once
    # Redis was back if that came within its lease (the engine retries), else it was abandoned
    # and sent again.
    for uid in in_flight:
        assert len(sent[uid]) == (2 if uid in abandoned else 1), (uid, sent[uid])
    assert len(abandoned) <= storm.callers_per_stub * len(stubs)
    ids: dict[str, set[str]] = defaultdict(set)
    for request in receiver.requests:
        ids[request.json()["uid"]].add(request.headers["webhook-id"])
    assert all(len(ids[uid]) == 1 for uid in uids)
