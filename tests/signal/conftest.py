"""The signal edge in process: its real app over an in-memory store and a bus whose node
channel a fake node serves (see :mod:`tests.signal.fakes`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.signal.fakes import FakeRouter, NodeBus
from trackyard.core.config import Config
from trackyard.core.store import MemoryStore
from trackyard.signal.app import create_app
from trackyard.signal.edge import Edge


@pytest.fixture
def edge() -> Edge:
    return Edge(Config.load(dev=True, env={}), MemoryStore(), NodeBus(), FakeRouter())


@pytest.fixture
def app(edge: Edge) -> FastAPI:
    return create_app(edge)


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        yield client
