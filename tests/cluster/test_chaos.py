"""Faults under live media, with the real SDK: what the clients decode is the verdict.

Each test keeps SDK clients publishing a pattern video to each other, does something violent
(kill -9 of the hosting SFU node, of a signal edge, of Redis with an empty restart and joins
racing it) and asserts, per pair of clients, when decoded frames came back; and that no
process died, no participant is a ghost (ListParticipants lists exactly the live clients) and
no Trackyard process logged an error.

Bounds (README, "Faults"): media back within ``MEDIA_BACK`` (5 s) of a node's kill -9; a dead
edge's participant leaves within edge TTL + ``reconnect_window`` + two heartbeats; a Redis
restart never interrupts media between clients already in a room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
import websockets

from tests.support.chaos import all_see_media, bad_log_lines, video_peer
from tests.support.cluster import Cluster, cluster_fixture, eventually, participant_identities
from tests.support.haproxy import HAProxy
from tests.support.sdk import EventWaiter, connected, sids, token

pytestmark = pytest.mark.sdk

MEDIA_BACK = 5.0  # seconds from kill -9 of the hosting node to decoded frames in every pair
RECONNECT_WINDOW = 1.0  # test config; the default is LiveKit's 5 s
FRAMES = 5  # readable frames that count as "media is back"


cluster = cluster_fixture(
    sfu_regions=["us-east", "us-east"],
    edge_regions=["us-east", "us-east"],
    routers_count=1,
    overrides={"node": {"reconnect_window": RECONNECT_WINDOW}},
)


def _no_errors(cluster: Cluster) -> None:
    bad = bad_log_lines(cluster.logs(full=True))
    assert not bad, "\n".join(bad[:20])


def _alive(cluster: Cluster, *, except_: tuple[object, ...] = ()) -> None:
    for proc in cluster.all_processes():
        if proc not in except_:
            assert proc.alive(), proc.logs()


def _restart(cluster: Cluster, index: int) -> None:
    """Bring a killed SFU back (same config) so the next test has two nodes again."""
    proc = cluster.sfus[index]
    proc.start()
    cluster.node_ids[index] = cluster.sfu_record(index)["id"]


async def test_kill_hosting_node_media_back_within_bound(cluster: Cluster) -> None:
    room = "chaos-node"
    e0, e1 = cluster.edges
    async with video_peer(e0.ws_url, "a", room) as a, video_peer(e1.ws_url, "b", room) as b:
        await all_see_media([a, b], 0.0, count=FRAMES, timeout=15)
        host = cluster.host_index(room)
        assert host is not None
        killed_at = time.monotonic()
        assert cluster.kill(cluster.sfus[host]) == -9
        back = await all_see_media([a, b], killed_at, count=FRAMES, timeout=MEDIA_BACK + 10)
        took = back - killed_at
        assert took < MEDIA_BACK, f"media back after {took:.2f}s"
        print(f"node kill: media back after {took:.2f}s")
        assert cluster.host_index(room) == 1 - host
        for edge in cluster.edges:
            assert await participant_identities(edge, room) == ["a", "b"]
        _alive(cluster, except_=(cluster.sfus[host],))
    _no_errors(cluster)
    _restart(cluster, host)


async def test_kill_edge_its_participants_leave_others_keep_media(cluster: Cluster) -> None:
    """c (a bare signal socket, no peer connections) and d (an SDK client) can come in only
    through edge 1; edge 1 dies. a and b (edge 0) never lose each other's media and see c
    leave with SIGNAL_CLOSE (its edge's registration expired) and d leave too (its SDK gives
    up and closes its peer connections: CONNECTION_TIMEOUT, or SIGNAL_CLOSE if the edge's
    expiry is noticed first), within the bound; ListParticipants and the store agree."""
    room = "chaos-edge"
    e0, e1 = cluster.edges
    async with (
        video_peer(e0.ws_url, "a", room) as a,
        video_peer(e0.ws_url, "b", room) as b,
        connected(e1.ws_url, "d", room),
        websockets.connect(f"{e1.ws_url}/rtc?access_token={token('c', room)}", open_timeout=10),
    ):
        await all_see_media([a, b], 0.0, count=FRAMES, timeout=15)
        await eventually(
            lambda: {"c", "d"} <= set(a.room.remote_participants), timeout=5, what="a to see c, d"
        )
        left = EventWaiter(a.room, "participant_disconnected")
        killed_at = time.monotonic()
        assert cluster.kill(e1) == -9
        ttl = max(3 * 0.5, 2.0)  # Edge.ttl at the default heartbeat settings
        bound = ttl + RECONNECT_WINDOW + 2 * 0.5 + 2.0  # + 2 heartbeats + scheduling margin
        (c,) = await left.wait(lambda p: p.identity == "c", timeout=bound + 5)
        (d,) = await left.wait(lambda p: p.identity == "d", timeout=bound + 5)
        gone_after = time.monotonic() - killed_at
        assert gone_after < bound, f"c and d left {gone_after:.2f}s after their edge died"
        assert c.disconnect_reason == rtc_reason("SIGNAL_CLOSE")
        assert d.disconnect_reason in (rtc_reason("SIGNAL_CLOSE"), rtc_reason("CONNECTION_TIMEOUT"))
        assert await participant_identities(e0, room) == ["a", "b"]
        await eventually(
            lambda: _stored_identities(cluster, room) == ["a", "b"],
            timeout=2,
            what="the store to agree",
        )
        now = time.monotonic()
        for p, q in ((a, b), (b, a)):
            gap = p.log.max_gap(q.identity, killed_at, now)
            assert gap < 1.0, f"{p.identity} lost {q.identity}'s media for {gap:.2f}s"
        _alive(cluster, except_=(e1,))
    _no_errors(cluster)
    e1.start()


async def test_kill_edge_behind_haproxy_resumes_without_media_gap(cluster: Cluster) -> None:
    """Both clients reach the edges through HAProxy; the edge holding their sockets dies.
    The SDK's resume (``reconnect=1&sid=``) lands on the other edge, which re-binds the live
    participant on its node: same participant and track SIDs, nobody sees anyone leave, and
    media never stops for longer than ``RESUME_GAP`` in either direction (it never went
    through the edge); the sessions of the dead edge leave no ghost."""
    room = "chaos-haproxy"
    e0, e1 = cluster.edges
    with HAProxy([e0.port, e1.port]) as lb:
        async with video_peer(lb.ws_url, "a", room) as a, video_peer(lb.ws_url, "b", room) as b:
            await all_see_media([a, b], 0.0, count=FRAMES, timeout=15)
            before = {p.identity: sids(p.room) for p in (a, b)}
            left = [EventWaiter(p.room, "participant_disconnected") for p in (a, b)]
            reconnected = [EventWaiter(p.room, "reconnected") for p in (a, b)]
            killed_at = time.monotonic()
            assert cluster.kill(e0) == -9  # balance first: e0 holds both sockets
            for waiter in reconnected:
                await waiter.wait(timeout=MEDIA_BACK + 10)
            resumed_at = time.monotonic()
            back = await all_see_media([a, b], resumed_at, count=FRAMES, timeout=MEDIA_BACK)
            for p, q in ((a, b), (b, a)):
                gap = p.log.max_gap(q.identity, killed_at, back)
                print(
                    f"edge kill behind HAProxy: resumed after {resumed_at - killed_at:.2f}s, "
                    f"{p.identity} lost {q.identity}'s media for at most {gap:.3f}s"
                )
                assert gap < RESUME_GAP, f"{p.identity} lost {q.identity}'s media for {gap:.2f}s"
            seen_leaving = [
                (p.identity, p.sid, p.disconnect_reason) for w in left for (p,) in w.calls
            ]
            assert not seen_leaving, f"someone saw a resuming participant leave: {seen_leaving}"
            after = {p.identity: sids(p.room) for p in (a, b)}
            assert after == before, (after, before)
            assert await participant_identities(e1, room) == ["a", "b"]
            await eventually(
                lambda: _stored_identities(cluster, room) == ["a", "b"],
                timeout=2,
                what="the store to agree",
            )
            assert lb.alive()
            _alive(cluster, except_=(e0,))
    _no_errors(cluster)
    e0.start()


RESUME_GAP = 3.0  # seconds without a decoded frame across an edge's kill -9 and the resume


SLOW_NODE = 1.5  # a node frozen this long (< dead_after 2 s) is slow, not dead
REDIS_STALL = 3.0  # Redis frozen longer than dead_after: every heartbeat is late alike


async def test_slow_node_and_stalled_redis_are_not_death(cluster: Cluster) -> None:
    """SIGSTOP the hosting node for less than dead_after, then Redis for longer than
    dead_after: nobody is declared dead, nobody is sent to reconnect, the room stays, and
    media flows again right after each freeze."""
    import signal as signals

    room = "chaos-slow"
    e0, e1 = cluster.edges
    async with video_peer(e0.ws_url, "a", room) as a, video_peer(e1.ws_url, "b", room) as b:
        await all_see_media([a, b], 0.0, count=FRAMES, timeout=15)
        placed = cluster.placement(room)
        assert placed is not None
        host = cluster.sfus[cluster.sfu_index(placed[0])]
        reconnects: list[str] = []
        for client in (a.room, b.room):
            client.on("reconnecting", lambda *_: reconnects.append("reconnecting"))
        verdicts_before = _death_verdicts(cluster)

        host.signal(signals.SIGSTOP)
        await asyncio.sleep(SLOW_NODE)  # the freeze itself is the fault: nothing to await
        host.signal(signals.SIGCONT)
        await all_see_media([a, b], time.monotonic(), count=FRAMES, timeout=10)

        assert cluster.redis.proc is not None
        cluster.redis.proc.send_signal(signals.SIGSTOP)
        await asyncio.sleep(REDIS_STALL)
        cluster.redis.proc.send_signal(signals.SIGCONT)
        resumed = time.monotonic()
        await all_see_media([a, b], resumed, count=FRAMES, timeout=10)
        # give the watchers a few rounds after the stall to (wrongly) judge
        await asyncio.sleep(1.0)
        assert reconnects == []
        assert cluster.placement(room) == placed
        assert await participant_identities(e0, room) == ["a", "b"]
        _alive(cluster)
    assert _death_verdicts(cluster) == verdicts_before, "a live node was judged dead"
    _no_errors(cluster)


def _death_verdicts(cluster: Cluster) -> int:
    logs = cluster.logs(full=True)
    return logs.count("hosting node is dead") + logs.count("room host is dead")


def rtc_reason(name: str) -> int:
    from livekit.protocol import models

    return int(models.DisconnectReason.Value(name))


def _stored_identities(cluster: Cluster, room: str) -> list[str]:
    from trackyard.core import keys

    with cluster.redis_client() as r:
        return sorted(k.decode() for k in r.hkeys(keys.participants(room)))


ROUNDS = 4


async def test_redis_restart_empty_with_racing_joins_keeps_one_room(cluster: Cluster) -> None:
    """kill -9 of Redis, empty restart, and a newcomer's join racing it, ROUNDS times: the
    newcomer always lands on the room's real host, the room never splits, media between the
    clients already there never stops, and the newcomer gets media."""
    room = "chaos-redis"
    e0, e1 = cluster.edges
    async with video_peer(e0.ws_url, "a", room) as a, video_peer(e1.ws_url, "b", room) as b:
        await all_see_media([a, b], 0.0, count=FRAMES, timeout=15)
        host = cluster.placement(room)
        assert host is not None
        others = [i for i in range(len(cluster.sfus)) if cluster.node_ids[i] != host[0]]
        await eventually(  # rooms of earlier tests close (departure_timeout): a clean count
            lambda: all(cluster.sfu_record(i)["stats"]["rooms"] == 0 for i in others),
            timeout=20,
            what="the other node to host no room",
        )
        reconnects: list[str] = []
        for client in (a.room, b.room):
            client.on("reconnecting", lambda *_: reconnects.append("reconnecting"))
        start = time.monotonic()
        for n in range(ROUNDS):
            cluster.redis.stop()  # SIGKILL; no persistence: it comes back empty
            await asyncio.sleep(0.3 + 0.4 * n)  # outage lengths vary; nothing to await
            # The newcomer's connect starts while Redis is down (the SDK retries a 503)...
            url = (e0 if n % 2 else e1).ws_url
            joining = asyncio.create_task(_join_and_see(url, f"n{n}", room, ["a", "b"]))
            await asyncio.sleep(0.05 * n)
            cluster.redis.start()  # same port, empty
            await asyncio.wait_for(joining, 30)
            placed = cluster.placement(room)
            assert placed is not None and placed[0] == host[0], (n, placed, host)
            for index in others:
                assert cluster.sfu_record(index)["stats"]["rooms"] == 0, "room split"
        now = time.monotonic()
        for p, q in ((a, b), (b, a)):
            gap = p.log.max_gap(q.identity, start, now)
            assert gap < 1.0, f"{p.identity} lost {q.identity}'s media for {gap:.2f}s"
        assert reconnects == []
        assert await participant_identities(e0, room) == ["a", "b"]
        # the host put its participants back into the store that forgot them (and the last
        # newcomer's leave reaches the store within one write)
        await eventually(
            lambda: _stored_identities(cluster, room) == ["a", "b"],
            timeout=2,
            what="the store to list a and b",
        )
        _alive(cluster)
    _no_errors(cluster)


async def _join_and_see(url: str, identity: str, room: str, others: list[str]) -> None:
    async with video_peer(url, identity, room) as n:
        for other in others:
            await n.log.back_after(other, 0.0, count=FRAMES, timeout=20)


FUZZ_SEED = 8
FUZZ_SIGNAL = 1200  # SignalRequests with hostile content, plus the undecodable frames
FUZZ_TWIRP = 600
TWIRP_METHODS = [
    "CreateRoom",
    "ListRooms",
    "DeleteRoom",
    "ListParticipants",
    "GetParticipant",
    "RemoveParticipant",
    "MutePublishedTrack",
    "UpdateParticipant",
    "UpdateSubscriptions",
    "SendData",
    "UpdateRoomMetadata",
]


def _junk_text(rng: random.Random, limit: int = 200) -> str:
    alphabet = "abcXYZ019 :/=\\{}[]\"'\x00\r\n\t\u00e9\u2603"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(limit)))


def _hostile_request(rng: random.Random, sdp: str, sids: list[str]) -> bytes:
    """One SignalRequest that decodes but carries nonsense (or, sometimes, undecodable bytes)."""
    from livekit.protocol import models
    from livekit.protocol import rtc as pb

    from tests.sfu.test_sdpcheck import _mutate

    # frames that end the session (undecodable bytes, a bad offer) are rarer: each costs a join
    pick = rng.choices(range(12), weights=[1, 1, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8])[0]
    sid = rng.choice([*sids, "TR_nope", "", _junk_text(rng, 20)])
    if pick == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))  # not protobuf
    if pick == 1:
        desc = pb.SessionDescription(type="offer", sdp=_mutate(rng, sdp), id=rng.randrange(9))
        return pb.SignalRequest(offer=desc).SerializeToString()
    if pick == 2:
        desc = pb.SessionDescription(type="answer", sdp=_mutate(rng, sdp), id=rng.randrange(9))
        return pb.SignalRequest(answer=desc).SerializeToString()
    if pick == 3:
        init = rng.choice(
            [
                _junk_text(rng),
                json.dumps({"candidate": _junk_text(rng, 60), "sdpMid": rng.choice(["0", 7])}),
                json.dumps([1, 2]),
                json.dumps({"candidate": "candidate:1 1 udp 1 10.9.9.9 9 typ host", "sdpMid": "9"}),
            ]
        )
        return pb.SignalRequest(
            trickle=pb.TrickleRequest(candidateInit=init, target=rng.randrange(3))
        ).SerializeToString()
    if pick == 4:
        req = pb.AddTrackRequest(
            cid=_junk_text(rng, 30),
            name=_junk_text(rng, 30),
            type=rng.randrange(4),
            source=rng.randrange(7),
            width=rng.randrange(1 << 16),
            height=rng.randrange(1 << 16),
        )
        return pb.SignalRequest(add_track=req).SerializeToString()
    if pick == 5:
        return pb.SignalRequest(
            mute=pb.MuteTrackRequest(sid=sid, muted=rng.random() < 0.5)
        ).SerializeToString()
    if pick == 6:
        return pb.SignalRequest(
            subscription=pb.UpdateSubscription(track_sids=[sid], subscribe=rng.random() < 0.5)
        ).SerializeToString()
    if pick == 7:
        return pb.SignalRequest(
            track_setting=pb.UpdateTrackSettings(
                track_sids=[sid],
                disabled=rng.random() < 0.5,
                quality=rng.randrange(4),
                width=rng.randrange(1 << 20),
                height=rng.randrange(1 << 20),
            )
        ).SerializeToString()
    if pick == 8:
        return pb.SignalRequest(
            update_metadata=pb.UpdateParticipantMetadata(
                metadata=_junk_text(rng, 2000),
                name=_junk_text(rng, 50),
                attributes={_junk_text(rng, 10): _junk_text(rng, 10)},
                request_id=rng.randrange(1 << 31),
            )
        ).SerializeToString()
    if pick == 9:
        return pb.SignalRequest(
            ping_req=pb.Ping(timestamp=rng.randrange(1 << 62))
        ).SerializeToString()
    if pick == 10:
        q = models.VideoQuality
        return pb.SignalRequest(
            update_layers=pb.UpdateVideoLayers(
                track_sid=sid, layers=[models.VideoLayer(quality=q.HIGH, width=rng.randrange(9))]
            )
        ).SerializeToString()
    return pb.SignalRequest(
        simulate=pb.SimulateScenario(speaker_update=rng.randrange(5))
    ).SerializeToString()


async def _fuzz_signal(url: str, room: str, rng: random.Random, sdp: str, sids: list[str]) -> int:
    """Send FUZZ_SIGNAL hostile frames as participant f, rejoining whenever we are thrown out."""
    sent = rejoins = 0
    while sent < FUZZ_SIGNAL:
        rejoins += 1
        assert rejoins < FUZZ_SIGNAL // 3, "rejoined too often"
        async with websockets.connect(
            f"{url}/rtc?access_token={token('f', room)}", open_timeout=10
        ) as ws:
            with contextlib.suppress(websockets.ConnectionClosed):
                while sent < FUZZ_SIGNAL:
                    await ws.send(_hostile_request(rng, sdp, sids))
                    sent += 1
                    with contextlib.suppress(TimeoutError):  # read what the node answers
                        while True:
                            await asyncio.wait_for(ws.recv(), 0.001)
    return rejoins


async def _fuzz_twirp(base: str, room: str, rng: random.Random) -> dict[int, int]:
    """Malformed bodies for every RoomService method. Well-formed ones name another room:
    a valid DeleteRoom or RemoveParticipant of the media room would be obeyed, rightly."""
    from livekit.protocol import room as room_pb

    from tests.support.sdk import admin_token

    headers = {"Authorization": f"Bearer {admin_token()}"}
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(FUZZ_TWIRP):
            method = rng.choice(TWIRP_METHODS)
            kind = rng.randrange(4)
            if kind == 0:
                body, ctype = (
                    bytes(rng.randrange(256) for _ in range(rng.randrange(80))),
                    "application/protobuf",
                )
            elif kind == 1:
                good = room_pb.ListParticipantsRequest(room=room).SerializeToString()
                body, ctype = good[: rng.randrange(len(good) + 1)] + b"\xff", "application/protobuf"
            elif kind == 2:
                body, ctype = _junk_text(rng).encode("utf-8", "replace"), "application/json"
            else:
                doc = {
                    "room": rng.choice([f"{room}-x", "", 7, None]),
                    "identity": rng.choice(["a", [], "zz"]),
                }
                body, ctype = json.dumps(doc).encode(), "application/json"
            resp = await http.post(
                f"{base}/twirp/livekit.RoomService/{method}",
                content=body,
                headers={**headers, "Content-Type": ctype},
            )
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
    return statuses


async def test_seeded_fuzzer_while_two_keep_media(cluster: Cluster) -> None:
    """Thousands of hostile signal frames, session descriptions and Twirp bodies from a
    seeded, bounded fuzzer; meanwhile a and b keep decoding each other's video."""
    from tests.sfu.test_sdpcheck import _offer

    room = "chaos-fuzz"
    e0, e1 = cluster.edges
    rng = random.Random(FUZZ_SEED)
    sdp = await _offer()
    async with video_peer(e0.ws_url, "a", room) as a, video_peer(e1.ws_url, "b", room) as b:
        await all_see_media([a, b], 0.0, count=FRAMES, timeout=15)
        sids = [
            pub.sid
            for p in a.room.remote_participants.values()
            for pub in p.track_publications.values()
        ]
        start = time.monotonic()
        rejoins, statuses = await asyncio.gather(
            _fuzz_signal(e0.ws_url, room, rng, sdp, sids),
            _fuzz_twirp(e1.http_url, room, random.Random(FUZZ_SEED + 1)),
        )
        end = time.monotonic()
        assert all(200 <= code < 500 for code in statuses), statuses
        for p, q in ((a, b), (b, a)):
            gap = p.log.max_gap(q.identity, start, end)
            assert gap < 1.5, f"{p.identity} lost {q.identity}'s media for {gap:.2f}s"
        await all_see_media([a, b], end, count=FRAMES, timeout=10)
        await eventually(
            lambda: participant_identities(e0, room),
            timeout=1,
            what="ListParticipants",
        )
        await eventually(
            _only(e0, room, ["a", "b"]), timeout=5, what="f to be gone once its socket closed"
        )
        print(f"fuzz: {FUZZ_SIGNAL} frames, {rejoins} joins, twirp {statuses}, {end - start:.1f}s")
        _alive(cluster)
    _no_errors(cluster)


def _only(edge: object, room: str, names: list[str]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await participant_identities(edge, room) == names  # type: ignore[arg-type]

    return check
