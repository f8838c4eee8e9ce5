"""The drain API (issue 13): ``POST /admin/nodes/{id}/drain`` on an edge and ``trackyard drain``.

A node drained through the API behaves as on SIGTERM (SHUTTING_DOWN at once, new rooms go
elsewhere, it exits 0 when its last participant left); a deadline given to the API replaces
``node.drain_deadline`` (participants still there are moved to another node and the process
exits); ``trackyard nodes`` shows the deadline. Bad tokens are 401, missing grants 403, an
unknown node 404.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import time

import httpx
import pytest
from livekit import rtc

from tests.support.cluster import Cluster, cluster_fixture, eventually, participant_identities
from tests.support.sdk import connected
from tests.support.trackyard import API_KEY, API_SECRET, TRACKYARD
from trackyard.core.auth import VideoGrants, create_token

pytestmark = pytest.mark.sdk

cluster = cluster_fixture(
    sfu_regions=["us-east", "us-east", "us-east"], edge_regions=["us-east"], routers_count=1
)

ADMIN = VideoGrants(room_admin=True, room_list=True)


def _token(grants: VideoGrants = ADMIN, secret: str = API_SECRET, key: str = API_KEY) -> str:
    return create_token(key, secret, identity="op", grants=grants, ttl=dt.timedelta(minutes=5))


def _drain_url(cluster: Cluster, node_id: str) -> str:
    return f"{cluster.edges[0].http_url}/admin/nodes/{node_id}/drain"


def _state(cluster: Cluster, node_id: str) -> str | None:
    record = cluster.stored_record(node_id)
    return None if record is None else str(record["state"])


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRACKYARD, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "LIVEKIT_URL": cluster.edges[0].ws_url},
    )


async def test_refusals(cluster: Cluster) -> None:
    node_id = cluster.node_ids[0]
    url = _drain_url(cluster, node_id)
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(url)
        assert resp.status_code == 401
        assert "Authorization: Bearer" in resp.json()["msg"]

        resp = await http.post(url, headers={"Authorization": f"Bearer {_token(secret='x' * 32)}"})
        assert resp.status_code == 401
        assert resp.json() == {
            "code": "unauthenticated",
            "msg": "invalid access token: signature does not match",
        }

        resp = await http.post(
            url, headers={"Authorization": f"Bearer {_token(key='nokey', secret='x' * 32)}"}
        )
        assert resp.status_code == 401
        assert "unknown API key 'nokey'" in resp.json()["msg"]

        joiner = _token(VideoGrants(room_join=True, room="r"))
        resp = await http.post(url, headers={"Authorization": f"Bearer {joiner}"})
        assert resp.status_code == 403
        assert resp.json()["msg"] == (
            "permission denied: token lacks the roomList and roomAdmin grant"
        )

        scoped = _token(VideoGrants(room_admin=True, room_list=True, room="r"))
        resp = await http.post(url, headers={"Authorization": f"Bearer {scoped}"})
        assert resp.status_code == 403
        assert "for room 'r' only" in resp.json()["msg"]

        admin = {"Authorization": f"Bearer {_token()}"}
        resp = await http.post(_drain_url(cluster, "ND_nosuchnode"), headers=admin)
        assert resp.status_code == 404
        assert resp.json()["msg"].startswith("no such node: ND_nosuchnode")

        resp = await http.post(url, headers=admin, json={"deadline": -1})
        assert resp.status_code == 400
        assert "deadline" in resp.json()["msg"]

        lister = _token(VideoGrants(room_list=True))
        resp = await http.get(
            f"{cluster.edges[0].http_url}/admin/nodes",
            headers={"Authorization": f"Bearer {lister}"},
        )
        assert resp.status_code == 200
        listed = {n["id"]: n["state"] for n in resp.json()["nodes"]}
        assert listed == dict.fromkeys(cluster.node_ids, "SERVING")

    # the CLI says why, and fails
    bad = _cli(cluster, "drain", node_id, "--api-key", API_KEY, "--api-secret", "wrong" * 8)
    assert bad.returncode == 1
    assert "drain refused (401): invalid access token: signature does not match" in bad.stderr
    unknown = _cli(cluster, "drain", "ND_gone", "--api-key", API_KEY, "--api-secret", API_SECRET)
    assert unknown.returncode == 1
    assert "drain refused (404): no such node: ND_gone" in unknown.stderr
    # nothing was drained by any of that
    assert all(_state(cluster, n) == "SERVING" for n in cluster.node_ids)


async def test_drain_via_cli_then_deadline_via_api(cluster: Cluster) -> None:
    url = cluster.edges[0].ws_url
    async with connected(url, "p1", "api-drain") as p1:
        host = cluster.host_index("api-drain")
        assert host is not None
        node_id = cluster.node_ids[host]
        node = cluster.sfus[host]

        # `trackyard drain` with a long deadline: SHUTTING_DOWN at once, deadline recorded
        asked = time.time()
        out = _cli(
            cluster,
            "drain",
            node_id,
            "--deadline",
            "120",
            "--api-key",
            API_KEY,
            "--api-secret",
            API_SECRET,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"{node_id}: SHUTTING_DOWN, deadline in 1")
        record = cluster.stored_record(node_id)
        assert record is not None and record["state"] == "SHUTTING_DOWN"
        assert asked + 118 < record["drain_deadline_at"] < time.time() + 121
        assert cluster.ready(node) == 503

        # `trackyard nodes` (reading the store) shows it
        nodes = _cli(cluster, "nodes", "--config", str(cluster.edges[0].config_path))
        assert nodes.returncode == 0, nodes.stderr
        rows = {line.split()[0]: line for line in nodes.stdout.splitlines()[1:]}
        assert set(rows) == set(cluster.node_ids)
        assert "SHUTTING_DOWN" in rows[node_id] and rows[node_id].rstrip().endswith("s")
        assert " in 1" in rows[node_id]
        assert all(rows[n].rstrip().endswith("-") for n in cluster.node_ids if n != node_id)

        # new rooms go elsewhere; its own room keeps admitting
        async with connected(url, "n1", "api-elsewhere") as n1:
            other = cluster.host_index("api-elsewhere")
            assert other not in (None, host)
            async with httpx.AsyncClient(timeout=5) as http:
                for i in range(10):
                    resp = await http.post(
                        f"{cluster.router_urls[0]}/place", json={"room": f"api-new-{i}"}
                    )
                    assert resp.json()["node_id"] != node_id, resp.text
            async with connected(url, "p2", "api-drain"):
                assert cluster.host_index("api-drain") == host
                assert await participant_identities(cluster.edges[0], "api-drain") == ["p1", "p2"]
            await p1.disconnect()
            # the last one left: it exits by itself, successfully, long before the deadline
            assert await asyncio.to_thread(node.wait, 10) == 0
            assert cluster.stored_record(node_id) is None

            # second node: the API with a short deadline moves n1 to the third node and exits
            assert other is not None
            other_id = cluster.node_ids[other]
            third = ({0, 1, 2} - {host, other}).pop()
            async with httpx.AsyncClient(timeout=15) as http:
                resp = await http.post(
                    _drain_url(cluster, other_id),
                    headers={"Authorization": f"Bearer {_token()}"},
                    json={"deadline": 2},
                )
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["id"] == other_id and body["state"] == "SHUTTING_DOWN"
            assert 0 < body["drain_deadline_at"] - time.time() <= 2
            assert body["stats"]["clients"] == 1
            drained = time.monotonic()
            assert await asyncio.to_thread(cluster.sfus[other].wait, 12) == 0
            assert time.monotonic() - drained >= 1.5  # not before the deadline
            await eventually(
                lambda: cluster.host_index("api-elsewhere") == third,
                timeout=10,
                what="n1's room to be placed on the third node",
            )
            await eventually(
                lambda: _n1_back(cluster),
                timeout=10,
                what="n1 to rejoin on the third node",
            )
            await eventually(
                lambda: n1.connection_state == rtc.ConnectionState.CONN_CONNECTED,
                timeout=5,
                what="n1's SDK to be connected again",
            )
    # the k8s preStop form: an SFU host drains its own node (its id from its node.api_port)
    third_node = cluster.sfus[third]
    assert third_node.alive()
    out = _cli(cluster, "drain", "--self", "--config", str(third_node.config_path), "--json")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["id"] == cluster.node_ids[third] and record["state"] == "SHUTTING_DOWN"
    assert record["drain_deadline_at"] is None  # no deadline given, none configured
    assert await asyncio.to_thread(third_node.wait, 10) == 0  # n1 left: nobody there


async def _n1_back(cluster: Cluster) -> bool:
    return await participant_identities(cluster.edges[0], "api-elsewhere") == ["n1"]
