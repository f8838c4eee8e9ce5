"""A publisher on edge A and a subscriber on edge B, in a room hosted on a third process."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from livekit import api, rtc

from tests.support.cluster import Cluster
from tests.support.sdk import EventWaiter, connected
from tests.support.trackyard import API_KEY, API_SECRET, TRACKYARD

pytestmark = pytest.mark.sdk


async def test_edges_bridge_data_rpc_metadata(cluster: Cluster) -> None:
    a_url, b_url = cluster.edges[0].ws_url, cluster.edges[1].ws_url
    async with connected(a_url, "pub", "bridged") as pub, connected(b_url, "sub", "bridged") as sub:
        assert set(sub.remote_participants) == {"pub"}
        data = EventWaiter(sub, "data_received")
        await pub.local_participant.publish_data(b"across edges")
        (pkt,) = await data.wait(lambda p: p.data == b"across edges")
        assert pkt.participant.identity == "pub"

        @sub.local_participant.register_rpc_method("echo")
        async def echo(inv: rtc.RpcInvocationData) -> str:
            return inv.payload.upper()

        assert (
            await asyncio.wait_for(
                pub.local_participant.perform_rpc(
                    destination_identity="sub", method="echo", payload="x"
                ),
                10,
            )
            == "X"
        )
        meta = EventWaiter(sub, "participant_metadata_changed")
        await asyncio.wait_for(pub.local_participant.set_metadata("over redis"), 10)
        await meta.wait(lambda p, o, n: n == "over redis")

        # the RoomService API works from any edge for a room on any node
        for edge in cluster.edges:
            async with api.LiveKitAPI(edge.http_url, API_KEY, API_SECRET) as lk:
                rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=["bridged"]))
                assert [r.num_participants for r in rooms.rooms] == [2]
                parts = await lk.room.list_participants(api.ListParticipantsRequest(room="bridged"))
                assert sorted(p.identity for p in parts.participants) == ["pub", "sub"]


def test_nodes_command_lists_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cluster.base_config()))
    out = subprocess.run(
        [TRACKYARD, "nodes", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()
    assert out[0].split()[:3] == ["NODE", "REGION", "STATE"]
    rows = [line.split() for line in out[1:]]
    assert len(rows) == len(cluster.sfus)
    assert all(row[0].startswith("ND_") and row[2] == "SERVING" for row in rows)
    assert sorted(row[1] for row in rows) == sorted(cluster.sfu_regions)
