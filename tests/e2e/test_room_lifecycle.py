"""Room lifetime: auto-create, empty_timeout, departure_timeout, auto_create off."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from livekit import api, rtc

from tests.support.sdk import connected, token
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk


@pytest.fixture(scope="module")
def server() -> Iterator[TrackyardProcess]:
    cfg = {"room": {"auto_create": False, "empty_timeout": 1, "departure_timeout": 1}}
    with TrackyardProcess(cfg) as proc:
        yield proc


async def _room_names(lkapi: api.LiveKitAPI) -> list[str]:
    return [r.name for r in (await lkapi.room.list_rooms(api.ListRoomsRequest())).rooms]


async def _until_gone(lkapi: api.LiveKitAPI, name: str, timeout: float = 10) -> None:
    async def poll() -> None:
        # the API has no room-closed event to await, so poll (bounded by wait_for)
        while name in await _room_names(lkapi):  # noqa: ASYNC110
            await asyncio.sleep(0.1)

    await asyncio.wait_for(poll(), timeout)


async def test_join_without_auto_create_is_refused(server: TrackyardProcess) -> None:
    room = rtc.Room()
    with pytest.raises(rtc.ConnectError) as err:
        await asyncio.wait_for(room.connect(server.ws_url, token("x", "never-made")), 20)
    assert "does not exist" in str(err.value) or "404" in str(err.value)


async def test_empty_timeout_closes_unjoined_room(lkapi: api.LiveKitAPI) -> None:
    await lkapi.room.create_room(api.CreateRoomRequest(name="lonely", empty_timeout=1))
    assert "lonely" in await _room_names(lkapi)
    await _until_gone(lkapi, "lonely")


async def test_departure_timeout_after_last_leave(
    server: TrackyardProcess, lkapi: api.LiveKitAPI
) -> None:
    await lkapi.room.create_room(
        api.CreateRoomRequest(name="visited", empty_timeout=60, departure_timeout=1)
    )
    async with connected(server.ws_url, "visitor", "visited"):
        listed = await lkapi.room.list_rooms(api.ListRoomsRequest(names=["visited"]))
        assert listed.rooms[0].num_participants == 1
    await _until_gone(lkapi, "visited")


async def test_room_max_participants_from_api(
    server: TrackyardProcess, lkapi: api.LiveKitAPI
) -> None:
    await lkapi.room.create_room(api.CreateRoomRequest(name="tiny", max_participants=1))
    async with connected(server.ws_url, "one", "tiny"):
        second = rtc.Room()
        with pytest.raises(rtc.ConnectError) as err:
            await asyncio.wait_for(second.connect(server.ws_url, token("two", "tiny")), 20)
        assert "full" in str(err.value) or "403" in str(err.value)
