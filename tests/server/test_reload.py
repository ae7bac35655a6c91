"""Reloading the receivers file (SIGHUP, POST /-/reload) under a running sidecar, and the admin
port's other paths: nothing running is lost or sent twice, a bad file keeps what runs."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest_asyncio

from sendonce.v1 import delivery_pb2 as pb
from sendonce.v1 import delivery_pb2_grpc
from sendonce_server import __version__
from sendonce_server.config import ServerSettings
from sendonce_server.server import start
from tests.server.process import Children, free_tcp_port
from tests.server.test_telemetry import scrape, value
from tests.support.http_receiver import HttpReceiver, closed_port_url
from tests.support.wait import until


@pytest_asyncio.fixture
async def children() -> AsyncIterator[Children]:
    async with Children() as started:
        yield started


def hooks(**urls: str) -> str:
    return "".join(
        f'[[receivers]]\nname = "{name}"\ntype = "webhook"\nsettings.url = "{url}"\n'
        for name, url in urls.items()
    )


def deliver(uid: str, channel: str = "hook") -> pb.DeliverRequest:
    return pb.DeliverRequest(
        uid=uid, channel=channel, notification=pb.Notification(subject="Deployment web failed")
    )


async def test_sighup_reloads_while_an_attempt_runs_and_nothing_is_lost_or_sent_twice(
    children: Children, tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    config = tmp_path / "receivers.toml"
    config.write_text(hooks(hook=http_receiver.url))
    sidecar = await children.replica("--config", str(config))
    http_receiver.hold()
    async with (
        HttpReceiver() as moved,
        grpc.aio.insecure_channel(sidecar.target) as channel,
    ):
        stub = delivery_pb2_grpc.DeliveryServiceStub(channel)
        running = asyncio.ensure_future(stub.Deliver(deliver("uid-1"), timeout=30))
        await http_receiver.wait_for_hits(1)

        config.write_text(hooks(hook=moved.url, pager=moved.url))
        sidecar.process.send_signal(signal.SIGHUP)
        await sidecar.stderr.wait_for("reloaded ")
        # The running attempt's key is not sent again; new keys go to the new URL.
        during = await stub.Deliver(deliver("uid-1"), timeout=1)
        fresh = await stub.Deliver(deliver("uid-2"), timeout=10)
        added = await stub.Deliver(deliver("uid-3", "pager"), timeout=10)
        http_receiver.release()
        first = await running
        again = await stub.Deliver(deliver("uid-1"), timeout=10)

        config.write_text("[[receivers]]\nname = 'Not A Name'\n")
        sidecar.process.send_signal(signal.SIGHUP)
        refused = await sidecar.stderr.wait_for("the configuration in use stays")
        kept = await stub.Deliver(deliver("uid-4", "pager"), timeout=10)

    assert during.outcome == pb.OUTCOME_IN_PROGRESS
    assert (first.outcome, first.attempt) == (pb.OUTCOME_DELIVERED, 1)
    assert again.outcome == pb.OUTCOME_ALREADY_DELIVERED
    assert fresh.outcome == added.outcome == kept.outcome == pb.OUTCOME_DELIVERED
    assert [r.json()["uid"] for r in http_receiver.requests] == ["uid-1"]
    assert sorted(r.json()["uid"] for r in moved.requests) == ["uid-2", "uid-3", "uid-4"]
    assert "receivers.0" in refused
    assert sidecar.process.returncode is None


async def test_post_reload_answers_what_happened_and_metrics_follow(
    tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    config = tmp_path / "receivers.toml"
    config.write_text(hooks(hook=http_receiver.url))
    admin = f"127.0.0.1:{free_tcp_port()}"
    sidecar = await start(ServerSettings(listen="127.0.0.1:0", config=config, metrics_listen=admin))
    try:
        async with httpx.AsyncClient(base_url=f"http://{admin}", timeout=10) as http:
            config.write_text("not = [toml")
            bad = await http.post("/-/reload")
            _, after_bad = await scrape(admin)
            config.write_text(hooks(hook=http_receiver.url, other=http_receiver.url))
            good = await http.post("/-/reload")
            _, after_good = await scrape(admin)
            wrong_method = await http.get("/-/reload")
    finally:
        await sidecar.stop()

    assert bad.status_code == 500
    assert bad.text.startswith("failed to reload config: receivers file")
    assert "not valid TOML" in bad.text
    assert value(after_bad, "sendonce_config_last_reload_successful") == 0
    assert value(after_bad, "sendonce_config_reload_failures_total") == 1
    assert good.status_code == 200
    assert "receivers: hook, other" in good.text
    assert value(after_good, "sendonce_config_last_reload_successful") == 1
    assert value(after_good, "sendonce_config_last_reload_success_timestamp_seconds") > 0
    assert wrong_method.status_code == 405
    assert set(sidecar.engine.receivers) == {"hook", "other"}


async def test_the_admin_port_answers_liveness_readiness_and_404() -> None:
    admin = f"127.0.0.1:{free_tcp_port()}"
    sidecar = await start(ServerSettings(listen="127.0.0.1:0", metrics_listen=admin))
    async with httpx.AsyncClient(base_url=f"http://{admin}", timeout=10) as http:
        live, ready = await http.get("/healthz"), await http.get("/readyz")
        missing, root = await http.get("/-/healthy"), await http.get("/")
        text, samples = await scrape(admin)
        sidecar.readiness.shutting_down = True  # as `stop` does first
        draining = await http.get("/readyz")
        sidecar.readiness.shutting_down = False
    await sidecar.stop()

    assert (live.status_code, live.text) == (200, "ok\n")
    assert (ready.status_code, ready.text) == (200, "ready\n")
    assert missing.status_code == root.status_code == 404
    assert "# HELP" not in missing.text
    assert (draining.status_code, draining.text) == (503, "shutting down\n")
    assert value(samples, "sendonce_store_up") == 1
    assert value(samples, "sendonce_build_info", version=__version__) == 1
    assert "process_cpu_seconds_total" in text
    assert "process_resident_memory_bytes" in text


async def test_readiness_follows_the_store() -> None:
    """A Redis that is not there: /readyz 503 and sendonce_store_up 0, liveness still 200."""
    admin = f"127.0.0.1:{free_tcp_port()}"
    store = closed_port_url().replace("http://", "redis://") + "/0"
    sidecar = await start(
        ServerSettings(
            listen="127.0.0.1:0", metrics_listen=admin, store=store, store_check_interval=0.05
        )
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://{admin}", timeout=10) as http:
            ready, live = await http.get("/readyz"), await http.get("/healthz")
            await until(lambda: sidecar.readiness.store_check_failures >= 1)
            _, samples = await scrape(admin)
    finally:
        await sidecar.stop()

    assert (ready.status_code, ready.text) == (503, "store unreachable\n")
    assert live.status_code == 200
    assert value(samples, "sendonce_store_up") == 0
    assert value(samples, "sendonce_store_check_failures_total") >= 1
