"""Subscriber negotiation as a state machine, on a fake peer connection (no aiortc I/O):
lost answers are re-offered a bounded number of times, then the client must reconnect;
changes during an offer coalesce into one renegotiation; an answer that lands while the
first DTLS is still connecting defers the next offer until the transport is up."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest
from aiortc import RTCSessionDescription

from trackyard.sfu.negotiation import NegotiationState, SubscriberNegotiation

ANSWER = (
    "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 AA:BB\r\na=setup:active\r\na=sctp-port:5000\r\n"
)


def state(negotiation: SubscriberNegotiation) -> NegotiationState:
    """Read afresh (each call may have changed it)."""
    return negotiation.state


class FakePeer:
    """The part of RTCPeerConnection negotiation uses, with aiortc's signaling states."""

    def __init__(self) -> None:
        self.signalingState = "stable"
        self.connectionState = "new"
        self.localDescription: RTCSessionDescription = RTCSessionDescription("", "offer")
        self.remoteDescription: RTCSessionDescription | None = None
        self.offers_made = 0

    async def createOffer(self) -> RTCSessionDescription:
        self.offers_made += 1
        await asyncio.sleep(0)  # aiortc yields here too: requests may arrive meanwhile
        return RTCSessionDescription(f"offer {self.offers_made}", "offer")

    async def setLocalDescription(
        self, sessionDescription: RTCSessionDescription | None = None
    ) -> None:
        assert sessionDescription is not None
        assert self.signalingState in ("stable", "have-local-offer")
        self.localDescription = sessionDescription
        self.signalingState = "have-local-offer"

    async def setRemoteDescription(self, sessionDescription: RTCSessionDescription) -> None:
        assert self.signalingState == "have-local-offer"
        self.remoteDescription = sessionDescription
        self.signalingState = "stable"


class Harness:
    def __init__(self, *, answer_timeout: float = 10.0, max_reoffers: int = 2) -> None:
        self.pc = FakePeer()
        self.offers: list[tuple[str, int]] = []
        self.failures: list[tuple[str, str]] = []
        self.failed = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.offered = asyncio.Event()
        self.negotiation = SubscriberNegotiation(
            self.pc,
            send_offer=self._send_offer,
            failed=self._failed,
            spawn=self._spawn,
            answer_timeout=answer_timeout,
            max_reoffers=max_reoffers,
        )

    def _send_offer(self, sdp: str, offer_id: int) -> None:
        self.offers.append((sdp, offer_id))
        self.offered.set()

    async def _failed(self, what: str, problem: str) -> None:
        self.failures.append((what, problem))
        self.failed.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    async def next_offer(self) -> tuple[str, int]:
        await asyncio.wait_for(self.offered.wait(), 5)
        self.offered.clear()
        return self.offers[-1]

    async def answer(self, offer_id: int = 0) -> None:
        await self.negotiation.answer(ANSWER, "answer", offer_id)


async def test_first_request_offers_at_once() -> None:
    h = Harness()
    await h.negotiation.request()
    assert h.offers == [("offer 1", 1)]
    assert state(h.negotiation) is NegotiationState.OFFER_SENT
    await h.answer(1)
    assert state(h.negotiation) is NegotiationState.IDLE
    assert h.pc.signalingState == "stable"


async def test_lost_answer_is_offered_again_then_the_client_must_reconnect() -> None:
    h = Harness(answer_timeout=0.05, max_reoffers=2)
    await h.negotiation.request()
    assert await h.next_offer() == ("offer 1", 1)
    # nobody answers: the same connection is offered again, twice, with new ids
    assert (await h.next_offer())[1] == 2
    assert (await h.next_offer())[1] == 3
    await asyncio.wait_for(h.failed.wait(), 5)
    assert h.failures == [("answer", "no answer after 3 offers")]
    assert len(h.offers) == 3
    assert state(h.negotiation) is NegotiationState.CLOSED
    await h.negotiation.request()  # closed: nothing more is offered
    assert len(h.offers) == 3


async def test_late_answer_to_an_offer_sent_again_is_ignored() -> None:
    h = Harness(answer_timeout=0.05, max_reoffers=2)
    await h.negotiation.request()
    await h.next_offer()
    assert (await h.next_offer())[1] == 2  # answer 1 was slow: offered again
    await h.answer(1)  # the answer to the first offer arrives late
    assert state(h.negotiation) is NegotiationState.OFFER_SENT
    await h.answer(2)
    assert state(h.negotiation) is NegotiationState.IDLE
    assert h.failures == []


async def test_answer_in_time_stops_the_timer() -> None:
    h = Harness(answer_timeout=0.1)
    await h.negotiation.request()
    await h.next_offer()
    await h.answer(1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(h.offered.wait(), 0.3)  # no re-offer after the bound
    assert h.offers == [("offer 1", 1)] and h.failures == []


async def test_overlapping_changes_coalesce_into_one_renegotiation() -> None:
    h = Harness()
    await h.negotiation.request()
    for _ in range(5):  # five subscriptions while the first offer is out
        await h.negotiation.request()
    assert state(h.negotiation) is NegotiationState.RENEGOTIATE_PENDING
    assert len(h.offers) == 1
    h.pc.connectionState = "connected"
    await h.answer(1)
    assert [i for _, i in h.offers] == [1, 2]  # exactly one more offer, made at once
    assert state(h.negotiation) is NegotiationState.OFFER_SENT
    await h.answer(2)
    assert state(h.negotiation) is NegotiationState.IDLE
    assert len(h.offers) == 2


async def test_requests_while_the_offer_is_being_made_are_not_lost() -> None:
    h = Harness()
    first = asyncio.ensure_future(h.negotiation.request())
    await asyncio.sleep(0)  # inside createOffer
    await h.negotiation.request()
    await first
    assert state(h.negotiation) is NegotiationState.RENEGOTIATE_PENDING
    h.pc.connectionState = "connected"
    await h.answer(1)
    assert len(h.offers) == 2


async def test_answer_while_waiting_for_transport_offers_once_connected() -> None:
    """aiortc starts a new sender only if DTLS is up when the answer adding it lands."""
    h = Harness()
    await h.negotiation.request()
    await h.negotiation.request()  # a subscription while the first offer is out
    h.pc.connectionState = "connecting"
    await h.answer(1)  # the first DTLS is not up yet: do not offer now
    assert state(h.negotiation) is NegotiationState.WAITING_FOR_TRANSPORT
    assert len(h.offers) == 1
    await h.negotiation.request()  # more changes while waiting: still one offer later
    assert len(h.offers) == 1
    h.negotiation.transport_changed()  # a change that is not "connected" releases nothing
    assert state(h.negotiation) is NegotiationState.WAITING_FOR_TRANSPORT
    h.pc.connectionState = "connected"
    h.negotiation.transport_changed()
    assert await h.next_offer() == ("offer 2", 2)
    assert state(h.negotiation) is NegotiationState.OFFER_SENT


async def test_unexpected_answer_is_ignored() -> None:
    h = Harness()
    await h.answer(0)  # nothing was offered
    assert state(h.negotiation) is NegotiationState.IDLE and h.failures == []


async def test_bad_answer_fails_the_negotiation() -> None:
    h = Harness()
    await h.negotiation.request()
    await h.negotiation.answer("v=0\r\n", "answer", 1)
    assert h.failures and h.failures[0][0] == "answer"
    assert state(h.negotiation) is NegotiationState.CLOSED


async def test_closed_connection_offers_nothing() -> None:
    h = Harness()
    h.pc.signalingState = "closed"
    await h.negotiation.request()
    assert h.offers == [] and state(h.negotiation) is NegotiationState.CLOSED


async def test_answer_with_an_id_we_never_sent_is_applied() -> None:
    """As LiveKit: an id mismatch is only warned about (an SDK may number differently)."""
    h = Harness()
    await h.negotiation.request()
    await h.answer(99)
    assert state(h.negotiation) is NegotiationState.IDLE and h.failures == []


async def test_no_answer_is_awaited_while_the_signal_is_gone() -> None:
    """A detached session's offer waits in the replay buffer: its answer cannot come until
    the resume, so the wait starts again then."""
    h = Harness(answer_timeout=0.1, max_reoffers=1)
    await h.negotiation.request()
    await h.next_offer()
    h.negotiation.signal_lost()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(h.offered.wait(), 0.4)  # several bounds pass: nothing
    assert h.failures == [] and state(h.negotiation) is NegotiationState.OFFER_SENT
    h.negotiation.signal_back()
    assert (await h.next_offer())[1] == 2  # still no answer after the resume: offered again
    await asyncio.wait_for(h.failed.wait(), 5)
    assert h.failures == [("answer", "no answer after 2 offers")]
