"""The official LiveKit Node SDK (@livekit/rtc-node) against Trackyard, unchanged.

A Python SDK client and the Node client tests/node/client.mjs join one room: they see each
other, exchange data both ways, call each other's RPC methods, and Node sees the Python
participant's metadata change. Needs `npm ci --prefix tests/node` (scripts/bootstrap --test).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from livekit import api, rtc

from tests.support.media import tone_audio
from tests.support.sdk import EventWaiter, connected, perform_rpc, token
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
CLIENT = NODE_DIR / "client.mjs"
OBSERVER = NODE_DIR / "observer.mjs"
SDK_DIR = NODE_DIR / "node_modules" / "@livekit" / "rtc-node"
TIMEOUT = 10.0
NODE_TOTAL = 30.0


def _node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run scripts/bootstrap --test (installs nodejs and npm)")
    if not SDK_DIR.is_dir():
        pytest.fail(
            f"{SDK_DIR} is missing: run `npm ci --prefix tests/node`"
            " (scripts/bootstrap --test does)"
        )
    return node


async def _start(node: str, script: Path, *args: str) -> NodeClient:
    proc = await asyncio.create_subprocess_exec(
        node,
        str(script),
        *args,
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
    )
    return NodeClient(proc)


class NodeClient:
    """The Node client as a subprocess; its JSON stdout lines are collected as events."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("{"):
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ev, dict) and "event" in ev:  # the SDK's own log lines lack it
                    self.events.append(ev)
                    self._changed.set()

    async def wait(
        self,
        event: str,
        timeout: float = TIMEOUT,
        pred: Callable[[dict[str, Any]], bool] = lambda ev: True,
    ) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            while True:
                for ev in self.events:
                    if ev["event"] == event and pred(ev):
                        return ev
                if self._reader.done():
                    raise AssertionError(f"node client ended before {event!r}: {self.report()}")
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {event!r} from the node client: {self.report()}") from None

    def seen(self, event: str) -> bool:
        return any(ev["event"] == event for ev in self.events)

    def report(self) -> str:
        return f"events={self.events} stderr={self.stderr.decode(errors='replace')[-2000:]}"

    async def finish(self) -> int:
        try:
            assert self.proc.stderr is not None
            self.stderr = await asyncio.wait_for(self.proc.stderr.read(), NODE_TOTAL)
            await asyncio.wait_for(self._reader, TIMEOUT)
            return await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


async def test_node_sdk_data_rpc_metadata(server: TrackyardProcess, room_name: str) -> None:
    node = _node_binary()
    async with connected(server.ws_url, "py", room_name) as py:
        joined = EventWaiter(py, "participant_connected")
        data = EventWaiter(py, "data_received")
        rpc_calls: list[rtc.RpcInvocationData] = []

        @py.local_participant.register_rpc_method("py.echo")
        async def echo(inv: rtc.RpcInvocationData) -> str:
            rpc_calls.append(inv)
            return f"py echoes: {inv.payload}"

        client = await _start(node, CLIENT, server.ws_url, token("node", room_name), "py")
        try:
            # Both see each other.
            await client.wait("connected", TIMEOUT * 2)
            (participant,) = await joined.wait(lambda p: p.identity == "node")
            seen = await client.wait("participant")
            assert seen["identity"] == "py"
            assert seen["sid"] == py.local_participant.sid

            # Python -> Node data (resent until it arrives: the first may race the data channel).
            for _ in range(int(TIMEOUT / 0.5)):
                await py.local_participant.publish_data(
                    b"hello from python", reliable=True, topic="to-node"
                )
                await asyncio.sleep(0.5)
                if client.seen("data_received"):
                    break
            got = await client.wait("data_received")
            assert got == {
                "event": "data_received",
                "from": "py",
                "topic": "to-node",
                "text": "hello from python",
            }

            # Node -> Python data.
            (packet,) = await data.wait(lambda p: p.topic == "to-py")
            assert packet.data == b"hello from node"
            assert packet.participant.identity == "node"

            # Node calls Python's RPC.
            result = await client.wait("rpc_result")
            assert result["response"] == "py echoes: ping from node"
            assert [c.caller_identity for c in rpc_calls] == ["node"]

            # Python calls Node's RPC.
            answer = await py.local_participant.perform_rpc(
                destination_identity="node", method="node.echo", payload="ping from python"
            )
            assert answer == "node echoes: ping from python"
            invoked = await client.wait("rpc_invoked")
            assert invoked["caller"] == "py"

            # Node sees Python's metadata change.
            await py.local_participant.set_metadata("py-meta-1")
            changed = await client.wait("metadata_changed")
            assert changed == {
                "event": "metadata_changed",
                "identity": "py",
                "metadata": "py-meta-1",
            }
            await client.wait("done")
            assert participant.identity == "node"
        finally:
            status = await client.finish()
        assert status == 0, client.report()
        assert not client.seen("error"), client.report()


async def test_node_sdk_sees_kind_speakers_quality_and_revocation(
    server: TrackyardProcess, room_name: str
) -> None:
    """The Node SDK raises what the node measures and decides: the peer's kind, the peer as
    active speaker (its tone decoded in Node), connection quality, and a track unpublished
    because an admin revoked canPublish."""
    node = _node_binary()
    async with connected(server.ws_url, "py", room_name, kind="agent") as py:
        joined = EventWaiter(py, "participant_connected")
        client = await _start(node, OBSERVER, server.ws_url, token("node", room_name), "py")
        try:
            await client.wait("connected", TIMEOUT * 2)
            await joined.wait(lambda p: p.identity == "node")
            peer = await client.wait("participant", pred=lambda ev: ev["identity"] == "py")
            assert peer["kind"] == "AGENT"
            async with tone_audio(py, 440.0) as pub:
                energy = await client.wait("audio_energy", TIMEOUT * 2)
                assert energy["sid"] == pub.sid and energy["mean_abs"] > 1000, energy
                await client.wait("speakers", pred=lambda ev: ev["identities"] == ["py"])
                for who in ("node", "py"):
                    await client.wait(
                        "quality",
                        TIMEOUT * 2,
                        pred=lambda ev, who=who: (
                            ev["identity"] == who and ev["quality"] == "QUALITY_EXCELLENT"
                        ),
                    )
                async with api.LiveKitAPI(server.http_url, "devkey", "secret") as lkapi:
                    await lkapi.room.update_participant(
                        api.UpdateParticipantRequest(
                            room=room_name,
                            identity="py",
                            permission=api.ParticipantPermission(
                                can_publish=False, can_subscribe=True, can_publish_data=True
                            ),
                        )
                    )
                    gone = await client.wait("track_unpublished")
                    assert gone == {
                        "event": "track_unpublished",
                        "identity": "py",
                        "sid": pub.sid,
                    }
                    # the server calls the Node participant's RPC method (RoomService.PerformRpc)
                    answer = await perform_rpc(
                        lkapi,
                        api.PerformRpcRequest(
                            room=room_name,
                            destination_identity="node",
                            method="node.echo",
                            payload="from the server",
                        ),
                    )
                    assert answer.payload == "node echoes: from the server"
                    invoked = await client.wait("rpc_invoked")
                    assert invoked["payload"] == "from the server"
            await py.local_participant.publish_data(b"bye", reliable=True, topic="end")
            await client.wait("done")
        finally:
            status = await client.finish()
        assert status == 0, client.report()
        assert not client.seen("error"), client.report()
