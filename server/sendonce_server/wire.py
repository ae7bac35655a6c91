"""Request bytes that are not the method's message: refused INVALID_ARGUMENT, never a traceback.

grpc.aio parses a request with the handler's `request_deserializer` before any servicer code
runs, and reports whatever it raises as UNKNOWN ("Unexpected <class 'DecodeError'>") with an
ERROR traceback in the log: one per call, for anyone who can reach the port (health needs no
token). Every service is registered through `add_lenient` instead: its deserializers return a
`Malformed` marker rather than raising, and its behaviours answer the marker with
INVALID_ARGUMENT, naming the field when one can be found, before the servicer sees it. A refusal
is logged at debug level only, so bad calls cannot flood the log.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeAlias

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from .api import refusals

log = logging.getLogger("sendonce.server")

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

_LENGTH_DELIMITED = 2  # the wire type of strings, bytes and embedded messages
_MAX_DEPTH = 16  # the search for the bad field stops here (a recursive message type)


_NOT_UTF8 = "is not valid UTF-8"


class Malformed:
    """A request that did not parse: what it should have been, and why (which field, if known)."""

    __slots__ = ("field", "message", "method", "reason")

    def __init__(self, method: str, field: str, reason: str, message: str) -> None:
        self.method = method
        self.field = field  # "" when no one field is to blame
        self.reason = reason  # what is wrong with the field
        self.message = message


def add_lenient(
    server: grpc.aio.Server, add_to_server: Callable[[Any, Any], None], servicer: object
) -> None:
    """Register `servicer` as the generated `add_*_to_server` would, with lenient parsing."""
    capture = _Capture()
    add_to_server(servicer, capture)
    unpaired = capture.generic_services - capture.services.keys()
    if unpaired:
        raise TypeError(f"services registered without method handlers: {sorted(unpaired)}")
    for service, handlers in capture.services.items():
        lenient = {
            name: lenient_handler(f"/{service}/{name}", handler)
            for name, handler in handlers.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, lenient),))
        # grpc-stubs predates this method; it takes precedence over the generic handler.
        server.add_registered_method_handlers(service, lenient)  # type: ignore[attr-defined]


class _Capture:
    """Stands for the server while generated code registers a service's handlers."""

    def __init__(self) -> None:
        self.services: dict[str, Mapping[str, Handler]] = {}
        self.generic_services: set[str] = set()

    def add_generic_rpc_handlers(
        self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        # Generated code passes the same handlers again, by name, to the method below.
        for handler in handlers:
            self.generic_services.add(handler.service_name())  # type: ignore[attr-defined]

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Handler]) -> None:
        self.services[service] = handlers


def lenient_handler(method: str, handler: Handler) -> Handler:
    """`handler` with a deserializer that never raises and a behaviour that refuses `Malformed`."""
    parse = handler.request_deserializer
    if parse is None:
        return handler
    descriptor: Descriptor = parse.__self__.DESCRIPTOR  # type: ignore[attr-defined]  # X.FromString

    def deserialize(data: bytes) -> object:
        try:
            return parse(data)
        except DecodeError as error:
            return _malformed(method, descriptor, data, error)

    serialize = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        behaviour = _streaming(handler.stream_stream)
        return grpc.stream_stream_rpc_method_handler(behaviour, deserialize, serialize)
    if handler.request_streaming:
        behaviour = _streaming(handler.stream_unary)
        return grpc.stream_unary_rpc_method_handler(behaviour, deserialize, serialize)
    if handler.response_streaming:
        behaviour = _unary(handler.unary_stream)
        return grpc.unary_stream_rpc_method_handler(behaviour, deserialize, serialize)
    behaviour = _unary(handler.unary_unary)
    return grpc.unary_unary_rpc_method_handler(behaviour, deserialize, serialize)


async def refuse(request: Malformed, context: Context) -> None:
    log.debug("refused a call to %s: %s", request.method, request.message)
    await refusals.abort(
        context, refusals.malformed(request.message, request.field, request.reason)
    )


def _unary(behaviour: Any) -> Any:
    """The behaviour, first refusing a `Malformed` request; of the same kind (grpc asks)."""
    if inspect.isasyncgenfunction(behaviour):

        async def generate(request: object, context: Context) -> AsyncIterator[object]:
            if type(request) is Malformed:
                await refuse(request, context)
            async for response in behaviour(request, context):
                yield response

        return generate
    if inspect.iscoroutinefunction(behaviour):

        async def answer(request: object, context: Context) -> object:
            if type(request) is Malformed:
                await refuse(request, context)
            return await behaviour(request, context)

        return answer
    raise TypeError(f"{behaviour!r}: a grpc.aio servicer method must be async")


def _streaming(behaviour: Any) -> Any:
    """The behaviour, reading its requests through a check that refuses a `Malformed` one."""

    async def checked(requests: AsyncIterator[object], context: Context) -> AsyncIterator[object]:
        async for request in requests:
            if type(request) is Malformed:
                await refuse(request, context)
            yield request

    if inspect.isasyncgenfunction(behaviour):

        async def generate(requests: AsyncIterator[object], context: Context) -> Any:
            async for response in behaviour(checked(requests, context), context):
                yield response

        return generate
    if inspect.iscoroutinefunction(behaviour):

        async def answer(requests: AsyncIterator[object], context: Context) -> object:
            return await behaviour(checked(requests, context), context)

        return answer
    raise TypeError(f"{behaviour!r}: a grpc.aio servicer method must be async")


def _malformed(method: str, descriptor: Descriptor, data: bytes, error: DecodeError) -> Malformed:
    field, reason = _blame(descriptor, data, "", 0) or ("", str(error).rpartition(": ")[2])
    where = f"{field} {reason}" if field else reason
    message = f"the request is not a valid {descriptor.full_name}: {where}"
    return Malformed(method, field, reason, message)


def _blame(descriptor: Descriptor, data: bytes, path: str, depth: int) -> tuple[str, str] | None:
    """The path of the field that keeps `data` from parsing as `descriptor` (at `path`), and why.

    Only on the refusal path: the bytes are read again as fields of unknown type, and each
    string and embedded message is checked on its own. None when no one field is to blame.
    """
    try:
        fields = UnknownFieldSet(Empty.FromString(data))
    except DecodeError:
        return (path, f"is not a valid {descriptor.full_name}") if path else None
    seen: dict[int, int] = {}
    for index in range(len(fields)):
        item = fields[index]
        field = descriptor.fields_by_number.get(item.field_number)
        # A known field with another wire type is kept as an unknown field, not refused.
        if field is None or item.wire_type != _LENGTH_DELIMITED:
            continue
        field_path = f"{path}.{field.name}" if path else field.name
        if field.is_repeated and not _is_map(field):
            field_path = f"{field_path}[{seen.get(field.number, 0)}]"
            seen[field.number] = seen.get(field.number, 0) + 1
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                item.data.decode()
            except UnicodeDecodeError:
                return field_path, _NOT_UTF8
        elif field.message_type is not None and depth < _MAX_DEPTH:
            if _is_map(field):
                blamed = _blame(field.message_type, item.data, "entry", depth + 1)
                if blamed is None:
                    continue
                part = blamed[0].removeprefix("entry.")
                if blamed[1] == _NOT_UTF8 and part in ("key", "value"):
                    return field_path, f"has a {part} that {_NOT_UTF8}"
                return field_path, "has an entry that does not parse"
            blamed = _blame(field.message_type, item.data, field_path, depth + 1)
            if blamed is not None:
                return blamed
    return None


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry
