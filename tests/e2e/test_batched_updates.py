"""Participant updates batched as LiveKit batches them (``room.participant_update_rate: 0``):
the browser SDK and the Python SDK see everyone who publishes nothing join and leave through
batched, multi-participant updates, and a publisher's track at once (its video decoded)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.support.browser import Browser, browser_fixture
from tests.support.media import pattern_video
from tests.support.metrics import metric, prometheus_config
from tests.support.sdk import EventWaiter, connected
from tests.support.trackyard import TrackyardProcess

pytestmark = pytest.mark.sdk

browser = browser_fixture()

CONFIG = {
    "room": {
        "departure_timeout": 1,
        "empty_timeout": 3,
        "participant_update_rate": 0,  # every non-urgent update waits for the batch
        "participant_update_interval": 1.0,
    },
}
QUIET = ["quiet0", "quiet1", "quiet2"]


@pytest.fixture(scope="module")
def server() -> Iterator[TrackyardProcess]:
    with TrackyardProcess({**CONFIG, **prometheus_config()}) as proc:
        yield proc
        assert proc.alive(), f"server died during the module:\n{proc.logs()}"


async def test_batched_joins_and_leaves_reach_the_browser_and_the_python_sdk(
    server: TrackyardProcess, browser: Browser, room_name: str
) -> None:
    batched_before = await metric(server, "trackyard_sfu_participant_updates_batched_total")
    async with browser.pages("watch") as (watch,), contextlib.AsyncExitStack() as stack:
        await watch.join(server.ws_url, "watcher", room_name)
        # the first quiet one learns of the later ones by updates alone
        first = await stack.enter_async_context(connected(server.ws_url, QUIET[0], room_name))
        came = EventWaiter(first, "participant_connected")
        gone = EventWaiter(first, "participant_disconnected")
        quiet = [first]
        for identity in QUIET[1:]:
            quiet.append(
                await stack.enter_async_context(connected(server.ws_url, identity, room_name))
            )
        publisher = await stack.enter_async_context(connected(server.ws_url, "pub", room_name))
        await stack.enter_async_context(pattern_video(publisher))

        for identity in QUIET:
            await watch.wait_event("participant_connected", {"identity": identity})
        await watch.wait_event("track_subscribed", {"identity": "pub", "source": "camera"})
        grown = await watch.decodes("pub")
        assert grown["last"]["framesDecoded"] > grown["first"]["framesDecoded"]
        assert await watch.call("remoteIdentities") == sorted([*QUIET, "pub"])
        batched = await metric(server, "trackyard_sfu_participant_updates_batched_total")
        assert batched > batched_before  # the joins above did wait for batches

        # the Python SDK of the first quiet participant learned of the later ones by batches too
        for identity in ("quiet1", "quiet2", "pub"):
            await came.wait(lambda p, identity=identity: p.identity == identity)
        assert set(first.remote_participants) == {"watcher", "quiet1", "quiet2", "pub"}

        # two leave: both SDKs see them go (batched leaves), the publisher's video goes on
        for room in quiet[1:]:
            await room.disconnect()
        for identity in QUIET[1:]:
            await watch.wait_event("participant_disconnected", {"identity": identity})
            await gone.wait(lambda p, identity=identity: p.identity == identity)
        assert await watch.call("remoteIdentities") == ["pub", "quiet0"]
        again = await watch.decodes("pub")
        assert again["last"]["framesDecoded"] > grown["last"]["framesDecoded"]
