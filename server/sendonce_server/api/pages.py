"""ListDeliveries' requests: filters, page size and the opaque page token (AIP-158).

The token is the list position of the last key the previous page looked at, with a digest of
the request's filters: a token only continues the list it came from, and anything else is
INVALID_ARGUMENT. It is base64url JSON, opaque to callers but not secret (it names a uid and a
channel the caller has just been shown).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from sendonce.v1 import delivery_pb2 as pb

from ..engine.listing import DeliveryQuery, DeliveryState, Position
from . import validation
from .validation import InvalidInput

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

_STATE = {
    pb.DELIVERY_STATE_IN_FLIGHT: DeliveryState.IN_FLIGHT,
    pb.DELIVERY_STATE_FAILED: DeliveryState.FAILED,
    pb.DELIVERY_STATE_EXHAUSTED: DeliveryState.EXHAUSTED,
    pb.DELIVERY_STATE_FAILED_PERMANENT: DeliveryState.FAILED_PERMANENT,
    pb.DELIVERY_STATE_DELIVERED: DeliveryState.DELIVERED,
}
STATE_TO_PB = {state: value for value, state in _STATE.items()}
_NOT_OURS = "is not a next_page_token of this list (the filters must stay the same)"


def query(request: pb.ListDeliveriesRequest) -> DeliveryQuery:
    """The engine's query of a request; InvalidInput names the field at fault."""
    if request.page_size < 0:
        raise InvalidInput("page_size", f"must not be negative, got {request.page_size}")
    state = None
    if request.state != pb.DELIVERY_STATE_UNSPECIFIED:
        state = _STATE.get(request.state)
        if state is None:
            raise InvalidInput("state", f"unknown state {request.state}")
    if request.channel:
        validation.check_channel(request.channel)
    if request.uid:
        validation.check_uid(request.uid)
    since = _seconds(request, "updated_after")
    until = _seconds(request, "updated_before")
    return DeliveryQuery(
        state=state,
        channel=request.channel or None,
        uid=request.uid or None,
        since=since,
        until=until,
        limit=min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
        after=_position(request.page_token, _digest(request)) if request.page_token else None,
    )


def next_page_token(request: pb.ListDeliveriesRequest, position: Position | None) -> str:
    if position is None:
        return ""
    data = [_digest(request), position.updated_at, position.channel, position.uid]
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def _seconds(request: pb.ListDeliveriesRequest, field: str) -> float | None:
    if not request.HasField(field):  # type: ignore[arg-type]  # a Literal of the fields
        return None
    timestamp = getattr(request, field)
    if not 0 <= timestamp.nanos < 1_000_000_000:
        raise InvalidInput(field, f"nanos must be between 0 and 999999999, got {timestamp.nanos}")
    return float(timestamp.seconds + timestamp.nanos / 1e9)


def _digest(request: pb.ListDeliveriesRequest) -> str:
    """The filters of the request: what a token must be used with again."""
    filters = pb.ListDeliveriesRequest()
    filters.CopyFrom(request)
    filters.ClearField("page_size")
    filters.ClearField("page_token")
    return hashlib.sha256(filters.SerializeToString(deterministic=True)).hexdigest()[:16]


def _position(token: str, digest: str) -> Position:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        made_for, updated_at, channel, uid = data
        if made_for != digest:
            raise InvalidInput("page_token", _NOT_OURS)
        if not (
            isinstance(updated_at, int | float)
            and isinstance(channel, str)
            and isinstance(uid, str)
        ):
            raise ValueError(token)
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise InvalidInput("page_token", _NOT_OURS) from None
    return Position(float(updated_at), channel, uid)
