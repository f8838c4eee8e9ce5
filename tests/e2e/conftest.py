from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.metrics import prometheus_config
from tests.support.trackyard import TrackyardProcess

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
