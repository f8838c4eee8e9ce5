"""Participants whose session is gone leave: no ghosts.

A participant's session is gone when the signal edge holding its WebSocket died (its
registration expired in the store: nothing will ever report the client gone), when its socket
closed without a leave (it is detached: kept, with its signal responses buffered, for a
resume on any edge), or when its peer connections failed. Either way it gets
``node.reconnect_window`` to come back (a resume re-binds it and cancels the removal; a rejoin
with the same identity replaces it; a connection that recovers cancels the removal); then it
leaves, and the others see it leave with LiveKit's reason: ``SIGNAL_CLOSE`` for a dead edge
(LiveKit's ParticipantCloseReasonSignalSourceClose), ``CONNECTION_TIMEOUT`` for failed peer
connections (ParticipantCloseReasonPeerConnectionDisconnected).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog
from livekit.protocol import models

from trackyard.core.liveness import StoreGeneration
from trackyard.sfu.participant import Participant, State

if TYPE_CHECKING:
    from trackyard.sfu.node import SfuNode

log = structlog.get_logger(__name__)

_FAILED_STATES = ("failed", "closed")


class SessionReaper:
    """The participants' :class:`~trackyard.sfu.participant.Liveness`."""

    def __init__(self, node: SfuNode, generation: StoreGeneration) -> None:
        self._node = node
        self._generation = generation
        self._edge_missing: dict[str, float] = {}  # edge id -> when first seen missing
        self._edge_gone: set[str] = set()  # edges judged dead: their participants detached
        self._pending: dict[str, asyncio.Task[None]] = {}  # participant sid -> removal

    @property
    def window(self) -> float:
        return self._node.config.node.reconnect_window

    # -- dead edges ------------------------------------------------------------------------

    async def check_edges(self) -> None:
        """One round: participants of edges whose registration expired start their window."""
        by_edge: dict[str, list[Participant]] = {}
        for p in list(self._node.sessions.values()):
            if p.edge_id:
                by_edge.setdefault(p.edge_id, []).append(p)
        for edge_id in list(self._edge_missing):
            if edge_id not in by_edge:
                del self._edge_missing[edge_id]
        self._edge_gone &= by_edge.keys()
        if self._generation.settling():
            self._edge_missing.clear()  # the store may have forgotten live edges
            return
        # A registration can lapse without the edge dying (a stalled store outlives its TTL
        # before the edge's next write lands): judge an edge gone only when it stayed
        # missing for node.dead_after on this node's own clock, as nodes are judged.
        grace = self._node.config.node.dead_after
        for edge_id, participants in by_edge.items():
            try:
                alive = await self._node.store.edge_alive(edge_id)
            except Exception as exc:
                log.debug("cannot check edge", edge=edge_id, error=str(exc))
                self._generation.unsettled()
                self._edge_missing.clear()
                return
            if alive:
                self._edge_missing.pop(edge_id, None)
                continue
            if edge_id in self._edge_gone:
                continue
            since = self._edge_missing.setdefault(edge_id, time.monotonic())
            if time.monotonic() - since < grace:
                continue
            self._edge_gone.add(edge_id)
            log.warning("signal edge is gone", edge=edge_id, participants=len(participants))
            for p in participants:
                p.detach()  # buffers what it would have been sent, for a resume elsewhere
                self._schedule(p, models.DisconnectReason.SIGNAL_CLOSE)

    async def _edge_back(self, edge_id: str) -> bool:
        try:
            return await self._node.store.edge_alive(edge_id)
        except Exception:
            return True  # no verdict without the store: keep the participant

    # -- detached sessions (socket closed without a leave) ----------------------------------

    def detached(self, participant: Participant) -> None:
        """``participant`` lost its socket; it leaves unless resumed within the window."""
        self._schedule(participant, models.DisconnectReason.SIGNAL_CLOSE)

    def resumed(self, participant: Participant) -> None:
        """A resume re-bound ``participant``: its pending removal (if any) is off."""
        task = self._pending.pop(participant.sid, None)
        if task is not None:
            task.cancel()

    # -- failed peer connections -------------------------------------------------------------

    def transport_changed(self, participant: Participant) -> None:
        """A peer connection of ``participant`` changed state (called by the participant)."""
        failed = any(
            pc.connectionState in _FAILED_STATES
            for pc in (participant.publisher_pc, participant.subscriber_pc)
        )
        if failed and participant.state is not State.DISCONNECTED:
            self._schedule(participant, models.DisconnectReason.CONNECTION_TIMEOUT)

    def _transport_back(self, participant: Participant) -> bool:
        return all(
            pc.connectionState not in _FAILED_STATES
            for pc in (participant.publisher_pc, participant.subscriber_pc)
        )

    # -- removal ----------------------------------------------------------------------------

    def _schedule(
        self,
        participant: Participant,
        reason: models.DisconnectReason,
    ) -> None:
        if participant.sid in self._pending:
            return
        task = self._node.spawn(self._remove_later(participant, reason))
        self._pending[participant.sid] = task
        task.add_done_callback(
            lambda t: (
                self._pending.pop(participant.sid, None)
                if self._pending.get(participant.sid) is t
                else None
            )
        )

    async def _remove_later(
        self, participant: Participant, reason: models.DisconnectReason
    ) -> None:
        await asyncio.sleep(self.window)
        room = self._node.rooms.get(participant.room_name)
        if room is None or room.participants.get(participant.identity) is not participant:
            return  # left, or replaced by a rejoin with the same identity
        if reason == models.DisconnectReason.SIGNAL_CLOSE:
            if not participant.detached and await self._edge_back(participant.edge_id):
                return
        elif self._transport_back(participant):
            return
        participant.log.warning(
            "session gone; participant leaves",
            reason=models.DisconnectReason.Name(reason),
            window=self.window,
        )
        await room.remove(participant, reason, notify=True)
