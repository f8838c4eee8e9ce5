"""Helpers around the real LiveKit SDK clients used by the end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from livekit import api, rtc

from tests.support.trackyard import API_KEY, API_SECRET

TIMEOUT = 10.0


def token(identity: str, room: str, **grants: Any) -> str:
    """A join token; ``name`` and ``kind`` (``"agent"``, ...) are claims, the rest grants."""
    grants.setdefault("can_update_own_metadata", True)
    tok = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_name(grants.pop("name", identity))
    )
    kind = grants.pop("kind", None)
    if kind is not None:
        tok = tok.with_kind(kind)
    return tok.with_grants(api.VideoGrants(room_join=True, room=room, **grants)).to_jwt()


def admin_token(room: str = "") -> str:
    return (
        api.AccessToken(API_KEY, API_SECRET)
        .with_grants(api.VideoGrants(room_admin=True, room_create=True, room_list=True, room=room))
        .to_jwt()
    )


@contextlib.asynccontextmanager
async def connected(
    url: str, identity: str, room: str, *, options: rtc.RoomOptions | None = None, **grants: Any
) -> AsyncIterator[rtc.Room]:
    client = rtc.Room()
    await asyncio.wait_for(
        client.connect(url, token(identity, room, **grants), options=options or rtc.RoomOptions()),
        TIMEOUT,
    )
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), TIMEOUT)


class EventWaiter:
    """Collects one SDK event's calls; ``wait(pred)`` returns the first matching call."""

    def __init__(self, room: rtc.Room, event: str) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._cond = asyncio.Condition()
        room.on(event, self._on)

    def _on(self, *args: Any) -> None:
        self.calls.append(args)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def wait(
        self, pred: Callable[..., bool] = lambda *a: True, timeout: float = TIMEOUT, since: int = 0
    ) -> tuple[Any, ...]:
        """The first matching call, looking only at calls from index ``since`` on."""

        async def find() -> tuple[Any, ...]:
            async with self._cond:
                while True:
                    for call in self.calls[since:]:
                        if pred(*call):
                            return call
                    await self._cond.wait()

        return await asyncio.wait_for(find(), timeout)


async def perform_rpc(lk: api.LiveKitAPI, req: api.PerformRpcRequest) -> api.PerformRpcResponse:
    """``RoomService.PerformRpc`` through livekit-api's own Twirp client and token signing
    (livekit-api 1.2.2 has the message types but no ``perform_rpc`` method yet)."""
    service = lk.room
    return await service._client.request(
        "RoomService",
        "PerformRpc",
        req,
        service._auth_header(api.VideoGrants(room_admin=True, room=req.room)),
        api.PerformRpcResponse,
    )


def sids(room: rtc.Room) -> tuple[str, frozenset[str], dict[str, str]]:
    """The client's own SID, its tracks' SIDs, and the SIDs it knows the others by."""
    local = room.local_participant
    return (
        local.sid,
        frozenset(local.track_publications),
        {p.identity: p.sid for p in room.remote_participants.values()},
    )


async def subscribed_track(
    room: rtc.Room, identity: str, kind: rtc.TrackKind.ValueType, timeout: float = 20
) -> rtc.Track:
    """The subscribed track of ``kind`` published by ``identity`` (waits for it)."""

    async def find() -> rtc.Track:
        while True:
            who = room.remote_participants.get(identity)
            for pub in who.track_publications.values() if who else ():
                if pub.kind == kind and pub.track is not None:
                    return pub.track
            await asyncio.sleep(0.05)  # polled: subscription has several events to watch

    return await asyncio.wait_for(find(), timeout)
