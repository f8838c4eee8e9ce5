"""The signal edge's HTTP app: ``/rtc``, ``/rtc/validate``, Twirp RoomService, health."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from trackyard.core import metrics
from trackyard.signal import adminapi, console, rtc, twirp
from trackyard.signal.agents import dispatchapi, hub
from trackyard.signal.edge import Edge
from trackyard.signal.metrics import TwirpMetrics


async def healthz(_request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    ok, why = await request.app.state.edge.ready()
    return PlainTextResponse(why, status_code=200 if ok else 503)


def create_app(edge: Edge) -> FastAPI:
    app = FastAPI(
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        routes=[
            Route("/rtc/v1", rtc.rtc_v1),
            WebSocketRoute("/rtc/v1", rtc.rtc_v1_socket),
            Route("/rtc/validate", rtc.validate),
            WebSocketRoute("/rtc", rtc.rtc_socket),
            Route(twirp.PREFIX + "{method}", twirp.handle, methods=["POST"]),
            Route(dispatchapi.PREFIX + "{method}", dispatchapi.handle, methods=["POST"]),
            WebSocketRoute("/agent", hub.agent_socket),
            Route(adminapi.PREFIX + "nodes", adminapi.list_nodes),
            Route(adminapi.PREFIX + "nodes/{node_id}/drain", adminapi.drain, methods=["POST"]),
            Route("/console", console.page),
            Route(adminapi.PREFIX + "cluster", console.cluster),
            Route(
                adminapi.PREFIX + "rooms/{room}/participants/{identity}/remove",
                console.remove_participant,
                methods=["POST"],
            ),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ],
        # Browser pages call these endpoints from any origin, as with LiveKit.
        middleware=[
            Middleware(TwirpMetrics),
            Middleware(
                CORSMiddleware,
                allow_origins=["*"],
                allow_methods=["*"],
                allow_headers=["*"],
                max_age=3600,
            ),
        ],
    )
    app.state.edge = edge

    async def probe() -> tuple[bool, bool]:
        return (await edge.ready())[0], edge.draining

    metrics.set_node_id(edge.edge_id, replace=False)  # an SFU node in the process wins
    metrics.add_readiness_probe("signal", probe)
    return app
