"""What edges ask of the router, whichever way they reach it (in-process or HTTP)."""

from __future__ import annotations

from typing import Protocol

from trackyard.core.store import Placement


class PlacementError(Exception):
    """No node can take the room; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Router(Protocol):
    async def place(self, room: str, *, create: bool, region: str = "") -> Placement | None:
        """Where ``room`` lives, placing it when ``create`` (None when absent and not created).

        ``region``: the caller's region, for region-aware selection ("" = the router's own).
        """
        ...
