"""The cluster console (issue 13): ``/console`` on a signal edge, in Chromium.

The page (one static file) polls ``GET /admin/cluster`` with an admin token and shows the
cluster's nodes and rooms from the store; the test watches it follow a participant joining,
remove one (its button), and drain a node (its button), and keeps a screenshot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import httpx
import pytest
from livekit import rtc

from tests.support.browser import Browser, browser_fixture
from tests.support.cluster import Cluster, cluster_fixture, participant_identities
from tests.support.media import pattern_video, tone_audio
from tests.support.sdk import connected
from tests.support.trackyard import API_KEY, API_SECRET
from trackyard.core.auth import VideoGrants, create_token

pytestmark = pytest.mark.sdk

cluster = cluster_fixture(
    sfu_regions=["us-east", "us-east"], edge_regions=["us-east"], routers_count=1
)
browser = browser_fixture()

ROOM = "console-room"
WAIT = 20.0  # the page polls every second; shared cores


def _token(grants: VideoGrants) -> str:
    return create_token(
        API_KEY, API_SECRET, identity="op", grants=grants, ttl=dt.timedelta(minutes=5)
    )


ADMIN = VideoGrants(room_admin=True, room_list=True)


async def test_data_endpoint_refuses_without_admin_token(cluster: Cluster) -> None:
    base = cluster.edges[0].http_url
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(f"{base}/admin/cluster")
        assert resp.status_code == 401
        assert resp.json()["code"] == "unauthenticated"
        bad = create_token(API_KEY, "x" * 32, identity="op", grants=ADMIN)
        resp = await http.get(f"{base}/admin/cluster", headers={"Authorization": f"Bearer {bad}"})
        assert resp.status_code == 401
        joiner = _token(VideoGrants(room_join=True, room=ROOM))
        auth = {"Authorization": f"Bearer {joiner}"}
        resp = await http.get(f"{base}/admin/cluster", headers=auth)
        assert resp.status_code == 403
        remove = f"{base}/admin/rooms/{ROOM}/participants/x/remove"
        assert (await http.post(remove)).status_code == 401
        assert (await http.post(remove, headers=auth)).status_code == 403
        lister = {"Authorization": f"Bearer {_token(VideoGrants(room_list=True))}"}
        assert (await http.post(remove, headers=lister)).status_code == 403

        # the page itself holds no data and loads nothing from elsewhere
        page = await http.get(f"{base}/console")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "<script src" not in page.text and "<link" not in page.text

        # the JSON the page reads: the store's node records, all SERVING, no rooms yet
        admin = {"Authorization": f"Bearer {_token(ADMIN)}"}
        resp = await http.get(f"{base}/admin/cluster", headers=admin)
        assert resp.status_code == 200
        body = resp.json()
        assert {n["id"]: n["state"] for n in body["nodes"]} == dict.fromkeys(
            cluster.node_ids, "SERVING"
        )


async def test_console_asks_for_a_token(cluster: Cluster, browser: Browser) -> None:
    page = await browser.goto("token", f"{cluster.edges[0].http_url}/console")
    try:
        await page.wait_text("#status", "paste an admin access token", WAIT)
        await page.fill("#token-input", _token(VideoGrants(room_join=True, room=ROOM)))
        await page.click("#token-save")
        await page.wait_text("#status", "token refused (403: permission denied", WAIT)
        await page.fill("#token-input", _token(ADMIN))
        await page.click("#token-save")
        await page.wait_text("#status", "2 node(s)", WAIT)
        for node_id in cluster.node_ids:
            await page.wait_text("#nodes", node_id, WAIT)
        # forgetting it asks again
        await page.click("#token-forget")
        await page.wait_text("#status", "paste an admin access token", WAIT)
    finally:
        await page.close()


async def test_console_in_chromium(
    cluster: Cluster, browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    edge = cluster.edges[0]
    url = f"{edge.http_url}/console?token={_token(ADMIN)}"
    async with (
        connected(edge.ws_url, "alice", ROOM) as alice,
        tone_audio(alice),
        pattern_video(alice),
    ):
        host = cluster.host_index(ROOM)
        assert host is not None
        host_id = cluster.node_ids[host]
        other_id = next(n for n in cluster.node_ids if n != host_id)
        page = await browser.goto("console", url)
        try:
            # the token given in the address is kept in sessionStorage, not in the address
            assert await page.url() == f"{edge.http_url}/console"
            # nodes: both, serving, with region; the host counts alice's client
            for node_id in cluster.node_ids:
                row = f'#nodes tr[data-node="{node_id}"]'
                assert "us-east" in await page.wait_text(row, "SERVING", WAIT)
            # the live room: host node, alice, her tracks with codec and simulcast layers
            room = f'[data-room="{ROOM}"]'
            await page.wait_text(room, f"on {host_id}", WAIT)
            await page.wait_text(room, "audio/opus", WAIT)
            text = await page.wait_text(room, "video/VP8", WAIT)
            assert "alice" in text and "simulcast" in text, text
            assert "1 participant(s)" in text, text
            await page.wait_text(f'#nodes tr[data-node="{host_id}"] td.clients', "1", WAIT)

            # a participant joins: the page follows
            async with connected(edge.ws_url, "bob", ROOM) as bob:
                left = asyncio.Event()
                bob.on("disconnected", lambda *_: left.set())
                text = await page.wait_text(room, "2 participant(s)", WAIT)
                assert "bob" in text, text
                await page.wait_text(f'#nodes tr[data-node="{host_id}"] td.clients', "2", WAIT)

                # remove bob from the page: the SDK is told, the store and the page follow
                await page.click(f'{room} button[data-remove="bob"]')
                await asyncio.wait_for(left.wait(), WAIT)
                assert bob.connection_state == rtc.ConnectionState.CONN_DISCONNECTED
                await page.wait_text("#action", "bob removed from", WAIT)
                text = await page.wait_text(room, "1 participant(s)", WAIT)
                assert "bob" not in text, text
                assert await participant_identities(edge, ROOM) == ["alice"]

            # drain the host from the page: SHUTTING_DOWN in the store and on the page
            assert "SERVING" in await page.text(f'#nodes tr[data-node="{host_id}"] td.state')
            await page.click(f'button[data-drain="{host_id}"]')
            await page.wait_text("#action", f"drain of {host_id} requested", WAIT)
            row = await page.wait_text(f'#nodes tr[data-node="{host_id}"]', "SHUTTING_DOWN", WAIT)
            assert "none (exits when empty)" in row, row
            record = cluster.stored_record(host_id)
            assert record is not None and record["state"] == "SHUTTING_DOWN"
            assert "SERVING" in await page.text(f'#nodes tr[data-node="{other_id}"] td.state')
            await page.wait_text(room, "SHUTTING_DOWN", WAIT)  # the room's host line says it

            shot = Path(tmp_path_factory.mktemp("console")) / "console.png"
            await page.screenshot(shot)
            assert shot.stat().st_size > 10_000
            print(f"console screenshot: {shot}")
        finally:
            await page.close()
    # alice left: the drained node exits by itself
    proc = cluster.sfus[host]
    assert await asyncio.to_thread(proc.wait, WAIT) == 0
    assert cluster.stored_record(host_id) is None
    assert not [m for m in browser.log if m.get("event") == "pageerror"], browser.report()
