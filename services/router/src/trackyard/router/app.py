"""The router's internal HTTP API: ``POST /place`` (a room's home), ``POST /seat`` (a
participant's node) plus health (metrics: ``prometheus.port``)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import structlog
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import Counter
from pydantic import BaseModel

from trackyard.core import metrics
from trackyard.core.errors import StoreUnavailableError
from trackyard.core.refusal import Code, Refusal
from trackyard.core.store import Store
from trackyard.router.placement import Placer

log = structlog.get_logger(__name__)

T = TypeVar("T")

PLACEMENTS = Counter("trackyard_router_placements_total", "Placement requests", ["outcome"])
SEATS = Counter(
    "trackyard_router_seats_total",
    "Seat requests (which node of a room a participant joins)",
    ["outcome"],
)


class PlaceRequest(BaseModel):
    room: str
    create: bool = True
    region: str = ""


class PlaceResponse(BaseModel):
    room: str
    node_id: str
    epoch: int


class SeatRequest(BaseModel):
    room: str
    identity: str
    create: bool = True
    region: str = ""


class SeatResponse(BaseModel):
    room: str
    home_node_id: str  # the room's placement
    epoch: int
    node_id: str  # where the participant goes


def _refused(refusal: Refusal) -> JSONResponse:
    """What :class:`~trackyard.router.client.HttpRouter` reads back into the refusal."""
    return JSONResponse(
        {"code": refusal.code.value, "reason": refusal.reason}, status_code=refusal.status
    )


async def _decide(counter: Counter, room: str, decision: Awaitable[T | None]) -> T | JSONResponse:
    """The placer's answer, or the refusal to send back (counted by outcome either way)."""
    try:
        found = await decision
    except Refusal as exc:
        counter.labels("refused").inc()
        return _refused(exc)
    except StoreUnavailableError as exc:
        counter.labels("store_down").inc()
        return _refused(Refusal(Code.UNAVAILABLE, f"store unavailable: {exc}"))
    if found is None:
        counter.labels("absent").inc()
        return _refused(Refusal(Code.NOT_FOUND, f"room {room} does not exist"))
    counter.labels("ok").inc()
    return found


def create_app(placer: Placer, store: Store) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, title="trackyard router")
    app.state.draining = False

    @app.post("/place", response_model=None)
    async def place(req: PlaceRequest) -> PlaceResponse | JSONResponse:
        decided = await _decide(
            PLACEMENTS, req.room, placer.place(req.room, create=req.create, region=req.region)
        )
        if isinstance(decided, JSONResponse):
            return decided
        return PlaceResponse(room=decided.room, node_id=decided.node_id, epoch=decided.epoch)

    @app.post("/seat", response_model=None)
    async def seat(req: SeatRequest) -> SeatResponse | JSONResponse:
        decided = await _decide(
            SEATS,
            req.room,
            placer.seat(req.room, req.identity, create=req.create, region=req.region),
        )
        if isinstance(decided, JSONResponse):
            return decided
        return SeatResponse(
            room=decided.home.room,
            home_node_id=decided.home.node_id,
            epoch=decided.home.epoch,
            node_id=decided.node_id,
        )

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/readyz")
    async def readyz() -> PlainTextResponse:
        if app.state.draining:
            return PlainTextResponse("draining", status_code=503)
        if not await store.ping():
            return PlainTextResponse("store unreachable", status_code=503)
        return PlainTextResponse("ok")

    async def probe() -> tuple[bool, bool]:
        draining = bool(app.state.draining)
        return (not draining and await store.ping()), draining

    metrics.add_readiness_probe("router", probe)
    return app
