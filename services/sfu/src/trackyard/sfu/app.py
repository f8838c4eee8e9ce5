"""The SFU node's own HTTP endpoints: liveness, readiness (metrics: ``prometheus.port``)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

from trackyard.core.node import NodeState
from trackyard.sfu.node import SfuNode


def create_app(node: SfuNode) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, title="trackyard sfu")

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/readyz")
    async def readyz() -> PlainTextResponse:
        if node.state is NodeState.SHUTTING_DOWN:
            return PlainTextResponse("draining", status_code=503)
        if not await node.store.ping():
            return PlainTextResponse("store unreachable", status_code=503)
        if not await node.bus.ping():
            return PlainTextResponse("bus unreachable", status_code=503)
        return PlainTextResponse("ok")

    @app.get("/node")
    async def record() -> JSONResponse:
        return JSONResponse(node.record(fresh=False).model_dump(mode="json"))

    return app
