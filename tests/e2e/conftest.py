from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from livekit import api

from tests.support.metrics import prometheus_config
from tests.support.trackyard import API_KEY, API_SECRET, TrackyardProcess

DEV_CONFIG = {
    "room": {"departure_timeout": 1, "empty_timeout": 3},
    "logging": {"level": "debug"},
}


@pytest.fixture(scope="module")
def server() -> Iterator[TrackyardProcess]:
    with TrackyardProcess({**DEV_CONFIG, **prometheus_config()}) as proc:
        yield proc
        assert proc.alive(), f"server died during the module:\n{proc.logs()}"


@pytest.fixture
def room_name(request: pytest.FixtureRequest) -> str:
    return f"room-{request.node.name}"[:60]


@pytest.fixture
async def lkapi(server: TrackyardProcess) -> AsyncIterator[api.LiveKitAPI]:
    """The server API of the module's ``server`` (whichever that module defines)."""
    client = api.LiveKitAPI(server.http_url, API_KEY, API_SECRET)
    yield client
    await client.aclose()
