"""DeliveryService: validate and convert the request, await the engine, convert the answer."""

from __future__ import annotations

import sys

import grpc

from sendonce.v1 import delivery_pb2 as pb
from sendonce.v1 import delivery_pb2_grpc as pb_grpc

from ..engine.engine import Engine
from ..engine.model import Key
from . import convert, refusals, validation
from .refusals import REFUSALS
from .validation import InvalidInput, Limits

# Answer this long before the caller's deadline, so the answer still reaches it.
_DEADLINE_MARGIN = 0.05


def _timeout(context: grpc.aio.ServicerContext[object, object]) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return max(0.0, remaining - _DEADLINE_MARGIN)


class CallGate:
    """Admission of DeliveryService calls: closed at shutdown, and at most `limit` at once.

    Once closed, the service answers new calls UNAVAILABLE before doing anything: the server
    keeps running while attempts drain, health answers NOT_SERVING and a caller gets a status it
    may retry. (Calls still queued when gRPC core shuts down would get CANCELLED instead,
    grpc/grpc#41785.)

    The limit counts only calls that reached the servicer, so only authenticated callers of
    this service (the token interceptor answers the others first) and never health. gRPC's own
    `maximum_concurrent_rpcs` counted every call, health and unauthenticated ones included.
    A counter the servicer reads, not an interceptor: with no interceptor configured, grpc
    skips that machinery for every call.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.closed = False
        self.limit = limit
        self.running = 0


async def _admit(gate: CallGate, context: grpc.aio.ServicerContext[object, object]) -> None:
    """Counts the call in, or aborts it; the caller must `gate.running -= 1` when admitted."""
    if gate.closed:
        await refusals.abort(context, refusals.SHUTTING_DOWN)
    if gate.limit is not None and gate.running >= gate.limit:
        await refusals.abort(context, refusals.overloaded(gate.limit))
    gate.running += 1


class DeliveryServicer(pb_grpc.DeliveryServiceServicer):
    def __init__(self, engine: Engine, limits: Limits, gate: CallGate | None = None) -> None:
        self.engine = engine
        self.limits = limits
        self.gate = gate if gate is not None else CallGate()

    async def Deliver(
        self, request: pb.DeliverRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.DeliverResponse:
        await _admit(self.gate, context)
        try:
            key = self._key(request.uid, request.channel)
            if not request.HasField("notification"):
                raise InvalidInput("notification", "is required")
            notification = convert.notification(request.notification, self.limits)
            receiver = self.engine.receiver(key.channel)
            policy = convert.retry_policy(request, receiver.policy)
            result = await self.engine.deliver(
                key,
                notification,
                policy,
                persisted_attempts=request.persisted_attempts,
                timeout=_timeout(context),
            )
        except REFUSALS as error:
            await refusals.abort(context, refusals.refusal(error))
        finally:
            self.gate.running -= 1
        return convert.deliver_response(result)

    async def AttemptCount(
        self, request: pb.AttemptCountRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.AttemptCountResponse:
        await _admit(self.gate, context)
        try:
            key = self._key(request.uid, request.channel)
            state = await self.engine.attempt_count(key, request.persisted_attempts)
        except REFUSALS as error:
            await refusals.abort(context, refusals.refusal(error))
        finally:
            self.gate.running -= 1
        return convert.attempt_count_response(state)

    async def Clear(
        self, request: pb.ClearRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ClearResponse:
        await _admit(self.gate, context)
        try:
            validation.check_uid(request.uid)
            for index, channel in enumerate(request.channels):
                validation.check_channel(channel, f"channels[{index}]")
            result = await self.engine.clear(request.uid, list(request.channels), request.force)
        except REFUSALS as error:
            await refusals.abort(context, refusals.refusal(error))
        finally:
            self.gate.running -= 1
        return convert.clear_response(result)

    @staticmethod
    def _key(uid: str, channel: str) -> Key:
        validation.check_uid(uid)
        validation.check_channel(channel)
        # Interned: the stored keys then share one string per receiver name.
        return Key(uid, sys.intern(channel))
