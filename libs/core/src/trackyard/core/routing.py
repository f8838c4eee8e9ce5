"""What edges ask of the router, whichever way they reach it (in-process or HTTP)."""

from __future__ import annotations

from typing import Protocol

from trackyard.core.store import Placement, Seat


class Router(Protocol):
    async def place(self, room: str, *, create: bool, region: str = "") -> Placement | None:
        """Where ``room`` lives, placing it when ``create`` (None when absent and not created).

        ``region``: the caller's region, for region-aware selection ("" = the router's own).
        Raises :class:`~trackyard.core.refusal.Refusal` (``unavailable``) when no node can
        take the room or no router answers.
        """
        ...

    async def seat(
        self, room: str, identity: str, *, create: bool, region: str = ""
    ) -> Seat | None:
        """Where participant ``identity`` joins ``room``: the room's home (placed when
        ``create``) and the node of the room that hosts the participant, recorded in the
        store's seats before this returns. None when the room is absent and not created.
        Raises :class:`~trackyard.core.refusal.Refusal` as :meth:`place` does.
        """
        ...
