"""How edges reach the router service over HTTP (any of several replicas)."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import structlog

from trackyard.core.refusal import Code, Refusal
from trackyard.core.store import Placement, Seat

log = structlog.get_logger(__name__)


class HttpRouter:
    """:class:`~trackyard.core.routing.Router` over the routers' ``POST /place`` and ``/seat``.

    Tries the replicas in turn (round robin start), so one router down costs one connect
    attempt, not a failed join. Every call is bounded by ``timeout``.
    """

    def __init__(self, urls: list[str], *, region: str = "", timeout: float = 3.0) -> None:
        if not urls:
            raise ValueError("router.urls: at least one router URL is needed")
        self._urls = [u.rstrip("/") for u in urls]
        self._next = itertools.cycle(range(len(self._urls)))
        self._region = region
        self._client = httpx.AsyncClient(timeout=timeout)

    async def place(self, room: str, *, create: bool, region: str = "") -> Placement | None:
        body = {"room": room, "create": create, "region": region or self._region}
        data = await self._post("/place", body)
        if data is None:
            return None
        return Placement(data["room"], data["node_id"], int(data["epoch"]))

    async def seat(
        self, room: str, identity: str, *, create: bool, region: str = ""
    ) -> Seat | None:
        body = {
            "room": room,
            "identity": identity,
            "create": create,
            "region": region or self._region,
        }
        data = await self._post("/seat", body)
        if data is None:
            return None
        home = Placement(data["room"], data["home_node_id"], int(data["epoch"]))
        return Seat(home, data["node_id"])

    async def _post(self, path: str, body: dict[str, object]) -> dict[str, Any] | None:
        """The first answering router's JSON reply; None for 404 (no such room)."""
        start = next(self._next)
        last_error = ""
        for i in range(len(self._urls)):
            url = self._urls[(start + i) % len(self._urls)]
            try:
                resp = await self._client.post(url + path, json=body)
            except httpx.HTTPError as exc:
                last_error = f"{url}: {exc!r}"
                log.warning("router unreachable", url=url, error=repr(exc))
                continue
            if resp.status_code == 404:
                return None
            if resp.status_code >= 500 and resp.status_code != 503:
                last_error = f"{url}: HTTP {resp.status_code}"
                continue
            data: dict[str, Any] = resp.json()
            if resp.status_code != 200:
                code = Code.parse(str(data.get("code") or Code.UNAVAILABLE))
                raise Refusal(code, str(data.get("reason", resp.text)))
            return data
        raise Refusal(Code.UNAVAILABLE, f"no router answered: {last_error}")

    async def close(self) -> None:
        await self._client.aclose()
