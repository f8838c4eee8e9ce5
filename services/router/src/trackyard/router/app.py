"""The router's internal HTTP API: ``POST /place`` plus health (metrics: ``prometheus.port``)."""

from __future__ import annotations

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

PLACEMENTS = Counter("trackyard_router_placements_total", "Placement requests", ["outcome"])


class PlaceRequest(BaseModel):
    room: str
    create: bool = True
    region: str = ""


class PlaceResponse(BaseModel):
    room: str
    node_id: str
    epoch: int


def _refused(refusal: Refusal) -> JSONResponse:
    """What :class:`~trackyard.router.client.HttpRouter` reads back into the refusal."""
    return JSONResponse(
        {"code": refusal.code.value, "reason": refusal.reason}, status_code=refusal.status
    )


def create_app(placer: Placer, store: Store) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, title="trackyard router")
    app.state.draining = False

    @app.post("/place", response_model=None)
    async def place(req: PlaceRequest) -> PlaceResponse | JSONResponse:
        try:
            placement = await placer.place(req.room, create=req.create, region=req.region)
        except Refusal as exc:
            PLACEMENTS.labels("refused").inc()
            return _refused(exc)
        except StoreUnavailableError as exc:
            PLACEMENTS.labels("store_down").inc()
            return _refused(Refusal(Code.UNAVAILABLE, f"store unavailable: {exc}"))
        if placement is None:
            PLACEMENTS.labels("absent").inc()
            return _refused(Refusal(Code.NOT_FOUND, f"room {req.room} does not exist"))
        PLACEMENTS.labels("ok").inc()
        return PlaceResponse(room=placement.room, node_id=placement.node_id, epoch=placement.epoch)

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
