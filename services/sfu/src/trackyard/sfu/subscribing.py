"""A participant's subscriber side: its subscriber connection, the tracks it receives
(DownTracks, with idle m-lines kept for reuse) and the data channels the room relays on."""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.exceptions import InvalidStateError
from livekit.protocol import rtc
from structlog.typing import FilteringBoundLogger

from trackyard.core import ids
from trackyard.core.config import LimitConfig
from trackyard.sfu import rtphooks
from trackyard.sfu import sdp as sdpparse
from trackyard.sfu.downtrack import DownTrack
from trackyard.sfu.negotiation import SubscriberNegotiation
from trackyard.sfu.rtpstats import TrafficCounters
from trackyard.sfu.trackcontract import TrackSource

RELIABLE = "_reliable"
LOSSY = "_lossy"
DATA_QUEUE_LIMIT = 256  # data packets held per channel until the participant's channel opens


class Subscriber:
    def __init__(
        self,
        pc: RTCPeerConnection,
        *,
        counters: TrafficCounters,
        history_size: int,
        ahead: bool = False,
        limit: LimitConfig,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        send_offer: Callable[[str, int], None],
        negotiation_failed: Callable[[str, str], Coroutine[Any, Any, None]],
        on_ready: Callable[[], None],
        log: FilteringBoundLogger,
    ) -> None:
        """``on_ready``: called when the connection or a data channel came up (see ``ready``).
        ``ahead``: the subscriber is a relay to another node (``DownTrack``'s ``ahead``)."""
        self.pc = pc
        self._counters = counters
        self._history_size = history_size
        self._ahead = ahead
        self._limit = limit
        self._on_ready = on_ready
        self.log = log
        self.downtracks: dict[str, DownTrack] = {}  # subscribed track sid -> its media
        self._spare: list[DownTrack] = []  # idle m-lines, reusable
        self._stopped = False
        self.channels = {
            RELIABLE: pc.createDataChannel(RELIABLE, ordered=True),
            LOSSY: pc.createDataChannel(LOSSY, ordered=False, maxRetransmits=0),
        }
        # data for this participant before its channels open: held, not dropped
        self._data_backlog: dict[str, deque[bytes]] = {
            RELIABLE: deque(maxlen=DATA_QUEUE_LIMIT),
            LOSSY: deque(maxlen=DATA_QUEUE_LIMIT),
        }
        self.negotiation = SubscriberNegotiation(
            pc,
            send_offer=send_offer,
            failed=negotiation_failed,
            spawn=spawn,
            restart_local_ice=self._restart_local_ice,
            answer_applied=self._answer_applied,
            log=log,
        )
        for label, channel in self.channels.items():
            channel.on("open", functools.partial(self._on_channel_open, label))

    def ready(self) -> bool:
        """Media connected and both data channels open: data sent now reaches the client."""
        return self.pc.connectionState == "connected" and all(
            c.readyState == "open" for c in self.channels.values()
        )

    def transport_changed(self) -> None:
        self.negotiation.transport_changed()

    # -- ICE restart (on a resume) ----------------------------------------------------------

    def restart_ice(self) -> None:
        """Offer an ICE restart, as LiveKit does on a resume: a client whose network changed
        can only reach us on new paths, which its old ICE credentials cannot open."""
        self.negotiation.restart_ice()

    def _restart_local_ice(self) -> None:
        ufrag = rtphooks.restart_local_ice(self.pc)
        if ufrag is not None:
            self.log.info("subscriber ICE restart offered", ufrag=ufrag)

    def _answer_applied(self, sdp: str) -> None:
        credentials = sdpparse.ice_credentials(sdp)
        if credentials is not None and rtphooks.answered_local_ice(self.pc, *credentials):
            self.log.info("subscriber ICE restart answered", ufrag=credentials[0])

    # -- subscriptions ----------------------------------------------------------------------

    async def subscribe(self, up: TrackSource, *, publisher_sid: str, track_sid: str) -> bool:
        """Start sending ``up``; renegotiates the subscriber connection."""
        if track_sid in self.downtracks or self._stopped or up.closed:
            return False
        # LiveKit's subscription_limit_video/_audio
        cap = (
            self._limit.subscription_limit_video
            if up.kind == "video"
            else self._limit.subscription_limit_audio
        )
        if cap and sum(1 for d in self.downtracks.values() if d.kind == up.kind) >= cap:
            self.log.info("subscription refused: limit reached", track=track_sid, limit=cap)
            return False
        stream_id = f"{publisher_sid}|{track_sid}"
        spare = next((dt for dt in self._spare if dt.can_rebind(up, stream_id)), None)
        if spare is not None:  # an idle m-line of an earlier subscription
            self._spare.remove(spare)
            spare.transceiver.direction = "sendonly"
            spare.rebind(up, stream_id=stream_id, track_id=track_sid)
            dt = spare
        else:
            try:
                transceiver = self.pc.addTransceiver(up.kind, direction="sendonly")
            except InvalidStateError:  # its transport closed: the client is going away
                self.log.info("subscription skipped: subscriber connection closed", track=track_sid)
                return False
            dt = DownTrack(
                up,
                transceiver,
                stream_id=stream_id,
                track_id=track_sid,
                counters=self._counters,
                history_size=self._history_size,
                ahead=self._ahead,
                logger=self.log,  # room and participant context in the media plane's logs
            )
        self.downtracks[track_sid] = dt
        self.log.debug("subscribed", track=track_sid, publisher=publisher_sid)
        await self.negotiation.request()
        return True

    async def unsubscribe(self, track_sid: str) -> bool:
        dt = self.downtracks.pop(track_sid, None)
        if dt is None:
            return False
        dt.close()
        # The m-line goes idle and is reused by a later subscription to another track. It must
        # drop the track's msid: the SDK rejects an SDP with the same msid twice.
        dt.transceiver.direction = "inactive"
        rtphooks.set_sender_msid(dt.transceiver.sender, "-", ids.new_id("idle-"))
        self._spare.append(dt)
        if not self._stopped:
            await self.negotiation.request()
        return True

    def set_track_preference(self, req: rtc.UpdateTrackSettings) -> None:
        """A view size, when given, wins over a quality (as in LiveKit)."""
        by_size = bool(req.width or req.height)
        for sid in req.track_sids:
            dt = self.downtracks.get(sid)
            if dt is not None:
                dt.set_layer_preference(
                    quality=None if by_size else int(req.quality),
                    width=req.width,
                    height=req.height,
                    disabled=req.disabled,
                )

    # -- data -------------------------------------------------------------------------------

    def send_data(self, payload: bytes, label: str) -> bool:
        """Send on the channel ``label``; held (bounded) until the channel opens."""
        channel = self.channels.get(label)
        if channel is None or self._stopped:
            return False
        if channel.readyState == "open":
            channel.send(payload)
            return True
        if channel.readyState != "connecting":
            return False
        backlog = self._data_backlog[label]
        if len(backlog) == backlog.maxlen:
            self.log.warning("data backlog full before channel opened; oldest dropped", label=label)
        backlog.append(payload)
        return True

    def _on_channel_open(self, label: str) -> None:
        backlog = self._data_backlog[label]
        channel = self.channels[label]
        while backlog:
            channel.send(backlog.popleft())
        self._on_ready()

    # -- end --------------------------------------------------------------------------------

    def stop(self) -> None:
        """No more subscriptions, offers or data (the participant is leaving)."""
        self._stopped = True
        self.negotiation.close()

    async def close(self) -> None:
        self.stop()
        for dt in self.downtracks.values():
            dt.close()
        self.downtracks.clear()
        await self.pc.close()
