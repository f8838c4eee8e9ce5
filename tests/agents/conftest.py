from __future__ import annotations

import pytest


@pytest.fixture
def room_name(request: pytest.FixtureRequest) -> str:
    return f"room-{request.node.name}"[:60]
