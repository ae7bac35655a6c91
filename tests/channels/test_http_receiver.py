"""The test receiver itself: what other tests rely on must hold."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.http_receiver import HttpReceiver, Reply, closed_port_url


async def test_records_requests_and_answers_200_by_default() -> None:
    async with HttpReceiver() as receiver, httpx.AsyncClient() as client:
        response = await client.put(f"{receiver.url}/a/b?x=1", content=b'{"k": 1}')

    assert response.status_code == 200
    (request,) = receiver.requests
    assert (request.method, request.path, request.query) == ("PUT", "/a/b", "x=1")
    assert request.json() == {"k": 1}
    assert request.headers["content-length"] == "8"
    assert receiver.hits == 1


async def test_a_sequence_is_consumed_in_order_and_its_last_reply_repeats() -> None:
    replies = (500, Reply(429, headers={"Retry-After": "3"}, body="slow"))
    async with HttpReceiver(*replies) as receiver, httpx.AsyncClient() as client:
        responses = [await client.post(receiver.url) for _ in range(3)]

    assert [r.status_code for r in responses] == [500, 429, 429]
    assert responses[1].headers["retry-after"] == "3"
    assert responses[2].text == "slow"


async def test_held_requests_are_counted_and_answered_on_release() -> None:
    async with HttpReceiver() as receiver, httpx.AsyncClient() as client:
        receiver.hold()
        calls = [asyncio.create_task(client.post(receiver.url)) for _ in range(3)]

        await receiver.wait_for_hits(3)
        assert not any(call.done() for call in calls)
        receiver.release()
        responses = await asyncio.gather(*calls)

    assert [r.status_code for r in responses] == [200, 200, 200]


async def test_wait_for_hits_times_out_with_a_clear_message() -> None:
    async with HttpReceiver() as receiver:
        with pytest.raises(TimeoutError, match="expected 1 requests, 0 arrived"):
            await receiver.wait_for_hits(1, timeout=0.05)


async def test_respond_needs_a_reply() -> None:
    async with HttpReceiver() as receiver:
        with pytest.raises(ValueError, match="at least one reply"):
            receiver.respond()


async def test_closing_releases_held_requests() -> None:
    async with httpx.AsyncClient() as client:
        async with HttpReceiver() as receiver:
            receiver.hold()
            call = asyncio.create_task(client.post(receiver.url))
            await receiver.wait_for_hits(1)

        assert (await call).status_code == 200


async def test_closed_port_refuses_connections() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(closed_port_url())
