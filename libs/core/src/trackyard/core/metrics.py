"""Prometheus exposition: the process's registry on ``prometheus.port`` (LiveKit's key), with
HTTP basic auth when ``prometheus.username`` is set, as LiveKit does. Never on the public port.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


async def metrics_endpoint(_request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _authorized(request: Request, username: str, password: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given_user, sep, given_pass = base64.b64decode(encoded).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return bool(sep) and (
        hmac.compare_digest(given_user, username) & hmac.compare_digest(given_pass, password)
    )


def metrics_app(username: str = "", password: str = "") -> Starlette:
    """``GET /`` and ``GET /metrics``: the registry; 401 without the credentials if set."""

    async def handler(request: Request) -> Response:
        if username and not _authorized(request, username, password):
            return PlainTextResponse(
                "Unauthorized",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="metrics"'},
            )
        return await metrics_endpoint(request)

    return Starlette(routes=[Route("/", handler), Route("/metrics", handler)])
