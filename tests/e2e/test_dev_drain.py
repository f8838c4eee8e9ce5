"""Draining the embedded server: signals, readiness, exit status, the drain deadline."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from tests.support.sdk import EventWaiter, connected
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk


async def _wait_exit(proc: TrackyardProcess, timeout: float) -> int:
    return await asyncio.wait_for(asyncio.to_thread(proc.wait, timeout), timeout + 1)


async def test_idle_server_exits_zero_on_sigterm() -> None:
    with TrackyardProcess() as srv:
        srv.signal(signal.SIGTERM)
        assert await _wait_exit(srv, 10) == 0


async def test_drain_keeps_room_then_exits_when_last_leaves(room_name: str) -> None:
    with TrackyardProcess() as srv:
        async with connected(srv.ws_url, "stay", room_name) as stay:
            srv.signal(signal.SIGINT)
            async with httpx.AsyncClient(timeout=5) as client:
                for _ in range(50):  # readiness flips at once; bounded poll
                    if (await client.get(srv.http_url + "/readyz")).status_code == 503:
                        break
                    await asyncio.sleep(0.05)
                assert (await client.get(srv.http_url + "/readyz")).status_code == 503
            # the active room still admits newcomers, and data flows
            async with connected(srv.ws_url, "newcomer", room_name) as newcomer:
                got = EventWaiter(stay, "data_received")
                await newcomer.local_participant.publish_data(b"while draining")
                await got.wait(lambda p: p.data == b"while draining")
            assert srv.alive()  # "stay" is still there
        assert await _wait_exit(srv, 10) == 0


async def test_drain_deadline_moves_participants(room_name: str) -> None:
    with TrackyardProcess({"node": {"drain_deadline": 1}}) as srv:
        async with connected(srv.ws_url, "lingerer", room_name) as room:
            reconnecting = EventWaiter(room, "reconnecting")
            srv.signal(signal.SIGQUIT)
            # at the deadline the client is told to reconnect elsewhere (here: nowhere left)
            await reconnecting.wait(timeout=10)
            assert await _wait_exit(srv, 15) == 0


async def test_second_signal_forces_exit(room_name: str) -> None:
    with TrackyardProcess() as srv:
        async with connected(srv.ws_url, "stuck", room_name):
            srv.signal(signal.SIGTERM)
            await asyncio.sleep(0.3)  # a second signal must be a separate event
            assert srv.alive()
            srv.signal(signal.SIGTERM)
            assert await _wait_exit(srv, 10) == 1
