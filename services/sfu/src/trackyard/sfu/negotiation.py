"""Subscriber negotiation: the server offers on a participant's subscriber connection.

One offer is in flight at a time; changes made meanwhile are folded into one renegotiation
after the answer. The answer is awaited for a bounded time: a lost one is re-offered a few
times, then the participant is told to reconnect (LiveKit waits 15 s for an answer, then
issues a full reconnect). The wait is on hold while the signal socket is gone (a detached
session: its offers wait for a resume in the replay buffer). Every state change goes through
:meth:`SubscriberNegotiation._set`.

States::

    IDLE --change--> OFFER_SENT --answer--> IDLE
    IDLE --change, first DTLS still connecting--> WAITING_FOR_TRANSPORT --connected--> OFFER_SENT
    OFFER_SENT --change--> RENEGOTIATE_PENDING --answer--> OFFER_SENT (or WAITING_FOR_TRANSPORT)
    OFFER_SENT, RENEGOTIATE_PENDING --no answer in time--> OFFER_SENT (re-offer, bounded)
                                                          then CLOSED (client must reconnect)
    any --bad description, close--> CLOSED

An ICE restart (:meth:`SubscriberNegotiation.restart_ice`, on a resume) is a change like any
other: the next offer made carries new local ICE credentials (``restart_local_ice`` runs just
before it is created), and every applied answer is handed to ``answer_applied`` (which takes
the client's new credentials from it).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import structlog
from aiortc import RTCSessionDescription
from structlog.typing import FilteringBoundLogger

from trackyard.sfu import sdpcheck

log = structlog.get_logger(__name__)

ANSWER_TIMEOUT = 5.0  # seconds an offer waits for its answer before it is sent again
MAX_REOFFERS = 2  # offers re-sent for one lost answer before the client must reconnect


class OfferingPeer(Protocol):
    """What negotiation uses of the subscriber peer connection (aiortc's names)."""

    @property
    def signalingState(self) -> str: ...

    @property
    def connectionState(self) -> str: ...

    @property
    def localDescription(self) -> RTCSessionDescription: ...

    @property
    def remoteDescription(self) -> RTCSessionDescription | None: ...

    async def createOffer(self) -> RTCSessionDescription: ...

    async def setLocalDescription(
        self, sessionDescription: RTCSessionDescription | None = None
    ) -> None: ...

    async def setRemoteDescription(self, sessionDescription: RTCSessionDescription) -> None: ...


class NegotiationState(enum.Enum):
    IDLE = "idle"
    OFFER_SENT = "offer-sent"  # an offer awaits its answer
    RENEGOTIATE_PENDING = "renegotiate-pending"  # ... and something changed since it was made
    WAITING_FOR_TRANSPORT = "waiting-for-transport"  # a change waits for the first DTLS
    CLOSED = "closed"


_AWAITING_ANSWER = (NegotiationState.OFFER_SENT, NegotiationState.RENEGOTIATE_PENDING)


class SubscriberNegotiation:
    def __init__(
        self,
        pc: OfferingPeer,
        *,
        send_offer: Callable[[str, int], None],
        failed: Callable[[str, str], Coroutine[Any, Any, None]],
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        answer_timeout: float = ANSWER_TIMEOUT,
        max_reoffers: int = MAX_REOFFERS,
        restart_local_ice: Callable[[], None] | None = None,
        answer_applied: Callable[[str], None] | None = None,
        log: FilteringBoundLogger = log,
    ) -> None:
        """``send_offer(sdp, offer_id)`` sends an offer to the client; ``failed(what,
        problem)`` ends the session with a reconnect (a bad description, a lost answer);
        ``restart_local_ice()`` gives the connection new local ICE credentials (see
        :meth:`restart_ice`); ``answer_applied(sdp)`` sees every answer applied."""
        self._pc = pc
        self._send_offer = send_offer
        self._failed = failed
        self._spawn = spawn
        self._answer_timeout = answer_timeout
        self._max_reoffers = max_reoffers
        self._log = log
        self.state = NegotiationState.IDLE
        self.offer_id = 0
        self._reoffers = 0  # offers re-sent for the answer being awaited
        self._superseded: set[int] = set()  # ids of offers re-sent since (their answers: late)
        self._timer: asyncio.TimerHandle | None = None
        self._signal_lost = False  # no answer can come: the answer wait is on hold
        self._restart_local_ice = restart_local_ice
        self._answer_applied = answer_applied
        self.ice_restart_pending = False  # the next offer made restarts ICE

    def _set(self, state: NegotiationState, why: str) -> None:
        if state is not self.state:
            self._log.debug(
                "subscriber negotiation", state=state.value, was=self.state.value, why=why
            )
        self.state = state
        if state not in _AWAITING_ANSWER:
            self._stop_timer()

    # -- inputs ------------------------------------------------------------------------------

    async def request(self) -> None:
        """The subscriber connection changed: offer now, or as soon as that is allowed."""
        state = self.state
        if state is NegotiationState.CLOSED:
            return
        if state in _AWAITING_ANSWER:
            self._set(NegotiationState.RENEGOTIATE_PENDING, "change while an offer is out")
            return
        if self._pc.signalingState == "closed":
            self._set(NegotiationState.CLOSED, "connection closed")
            return
        if self._pc.remoteDescription is not None and self._pc.connectionState in (
            "new",
            "connecting",
        ):
            # aiortc starts a sender only if DTLS is already up when the answer that adds it
            # is applied; an answer applied while the first one is still connecting leaves the
            # new senders unstarted forever (the newcomer who never gets media). Offer again
            # once connected.
            self._set(NegotiationState.WAITING_FOR_TRANSPORT, "first DTLS still connecting")
            return
        await self._offer(reoffer=False)

    def transport_changed(self) -> None:
        """The subscriber connection's state changed (connected releases a waiting offer)."""
        if (
            self.state is NegotiationState.WAITING_FOR_TRANSPORT
            and self._pc.connectionState == "connected"
        ):
            self._set(NegotiationState.IDLE, "transport connected")
            self._spawn(self.request())

    async def answer(self, sdp: str, sdp_type: str, offer_id: int) -> None:
        """The client's answer to our offer (``offer_id`` 0: the client did not say which)."""
        if self.state not in _AWAITING_ANSWER or self._pc.signalingState != "have-local-offer":
            self._log.warning(
                "unexpected subscriber answer",
                state=self.state.value,
                signaling=self._pc.signalingState,
            )
            return
        if offer_id in self._superseded:  # answers an offer we have sent again since
            self._log.info("stale subscriber answer ignored", answered=offer_id, now=self.offer_id)
            return
        if offer_id and offer_id != self.offer_id:  # LiveKit warns and applies it too
            self._log.warning("subscriber answer id mismatch", answered=offer_id, now=self.offer_id)
        problem = sdpcheck.problem(sdp, sdp_type or "answer")
        if not problem:
            try:
                await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
        if problem:
            self._set(NegotiationState.CLOSED, "bad answer")
            await self._failed("answer", problem)
            return
        if self._answer_applied is not None:
            self._answer_applied(sdp)
        pending = self.state is NegotiationState.RENEGOTIATE_PENDING
        self._reoffers = 0
        self._superseded.clear()
        self._set(NegotiationState.IDLE, "answer applied")
        if pending:
            await self.request()

    def signal_lost(self) -> None:
        """The signal socket is gone (detached): offers wait in the replay buffer, so the
        wait for an answer is on hold until :meth:`signal_back`."""
        self._signal_lost = True
        self._stop_timer()

    def signal_back(self) -> None:
        """Resumed: the offer is replayed; its answer gets the full wait again."""
        self._signal_lost = False
        if self.state in _AWAITING_ANSWER:
            self._start_timer()

    def restart_ice(self) -> None:
        """Offer with new local ICE credentials (LiveKit's ICE restart of the subscriber
        connection on a resume: the client's network may have changed, and its old path may
        be dead). An offer already out is answered first; the restart follows it."""
        if self.state is NegotiationState.CLOSED or self._restart_local_ice is None:
            return
        self.ice_restart_pending = True
        self._spawn(self.request())

    def close(self) -> None:
        self._set(NegotiationState.CLOSED, "closed")

    # -- offers ------------------------------------------------------------------------------

    async def _offer(self, *, reoffer: bool) -> None:
        # in flight from here: changes made while the offer is being created wait for its answer
        self._set(NegotiationState.OFFER_SENT, "re-offer" if reoffer else "offer")
        try:
            if self.ice_restart_pending and self._restart_local_ice is not None:
                self.ice_restart_pending = False
                self._restart_local_ice()
            offer = await self._pc.createOffer()
            await self._pc.setLocalDescription(offer)
        except Exception as exc:
            if self._pc.signalingState == "closed" or self.state is NegotiationState.CLOSED:
                self._set(NegotiationState.CLOSED, "closed while offering")
                return  # the participant left while the offer was being made
            self._set(NegotiationState.CLOSED, "offer failed")
            await self._failed("offer", f"{type(exc).__name__}: {exc}")
            return
        if self.state is NegotiationState.CLOSED:
            return
        if reoffer:
            self._superseded.add(self.offer_id)
        self.offer_id += 1
        self._send_offer(self._pc.localDescription.sdp, self.offer_id)
        self._start_timer()

    def _start_timer(self) -> None:
        self._stop_timer()
        if not self._signal_lost:
            self._timer = asyncio.get_running_loop().call_later(
                self._answer_timeout, self._answer_overdue
            )

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _answer_overdue(self) -> None:
        self._timer = None
        if self.state not in _AWAITING_ANSWER:
            return
        if self._reoffers < self._max_reoffers:
            self._reoffers += 1
            self._log.warning(
                "no subscriber answer; offering again",
                attempt=self._reoffers,
                timeout=self._answer_timeout,
            )
            self._spawn(self._offer(reoffer=True))
            return
        self._set(NegotiationState.CLOSED, "answer lost")
        self._spawn(self._failed("answer", f"no answer after {self._reoffers + 1} offers"))
