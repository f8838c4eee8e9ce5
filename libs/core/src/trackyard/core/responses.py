"""Every message the server sends a client: one builder per ``SignalResponse`` kind.

Node, room, participant and edge build outbound signal messages only here, so the wire facts
(the design map, §2: the semver rule on ``server_info.version``, ``subscriber_primary``, a
non-zero ping interval, ``can_reconnect`` following the leave action) hold in one place. Each
builder returns a ``livekit.protocol.rtc.SignalResponse`` whose ``message`` oneof is set to the
LiveKit message named in its docstring.
"""

from __future__ import annotations

from collections.abc import Iterable

from livekit.protocol import models, rtc

SERVER_VERSION = "1.9.0"  # the SDKs require semver >= 1.8.0 when a version is given
PROTOCOL_VERSION = 16


def server_info(*, region: str, node_id: str) -> models.ServerInfo:
    """``ServerInfo`` as sent in ``join`` and ``reconnect``."""
    return models.ServerInfo(
        edition=models.ServerInfo.Standard,
        version=SERVER_VERSION,
        protocol=PROTOCOL_VERSION,
        region=region,
        node_id=node_id,
    )


def join(
    *,
    room: models.Room,
    participant: models.ParticipantInfo,
    others: Iterable[models.ParticipantInfo],
    ice_servers: Iterable[rtc.ICEServer],
    ping_interval: int,
    ping_timeout: int,
    region: str,
    node_id: str,
) -> rtc.SignalResponse:
    """``join`` (JoinResponse): the first message of a session. Two peer connections, the
    subscriber one primary (protocol v0); a zero ``ping_interval`` crashes the client."""
    return rtc.SignalResponse(
        join=rtc.JoinResponse(
            room=room,
            participant=participant,
            other_participants=others,
            server_version=SERVER_VERSION,
            server_region=region,
            subscriber_primary=True,
            ice_servers=ice_servers,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            server_info=server_info(region=region, node_id=node_id),
        )
    )


def reconnect(
    *, ice_servers: Iterable[rtc.ICEServer], region: str, node_id: str
) -> rtc.SignalResponse:
    """``reconnect`` (ReconnectResponse): a resumed session keeps its peer connections."""
    return rtc.SignalResponse(
        reconnect=rtc.ReconnectResponse(
            ice_servers=ice_servers, server_info=server_info(region=region, node_id=node_id)
        )
    )


def leave(
    reason: models.DisconnectReason,
    action: rtc.LeaveRequest.Action = rtc.LeaveRequest.DISCONNECT,
) -> rtc.SignalResponse:
    """``leave`` (LeaveRequest): the server ends the session. ``action=RECONNECT`` makes the
    SDK rejoin from scratch (``can_reconnect`` follows the action, as LiveKit sets it)."""
    return rtc.SignalResponse(
        leave=rtc.LeaveRequest(
            can_reconnect=action == rtc.LeaveRequest.RECONNECT, reason=reason, action=action
        )
    )


def rejoin() -> rtc.SignalResponse:
    """``leave{STATE_MISMATCH, RECONNECT}``: nothing to resume here, rejoin from scratch."""
    return leave(models.DisconnectReason.STATE_MISMATCH, rtc.LeaveRequest.RECONNECT)


def offer(sdp: str, offer_id: int) -> rtc.SignalResponse:
    """``offer`` (SessionDescription): the server (re)negotiates the subscriber connection."""
    return rtc.SignalResponse(offer=rtc.SessionDescription(type="offer", sdp=sdp, id=offer_id))


def answer(sdp: str, offer_id: int) -> rtc.SignalResponse:
    """``answer`` (SessionDescription): to the client's publisher offer of the same id."""
    return rtc.SignalResponse(answer=rtc.SessionDescription(type="answer", sdp=sdp, id=offer_id))


def pong(timestamp: int) -> rtc.SignalResponse:
    """``pong``: the answer to the legacy ``ping`` (the client's timestamp echoed)."""
    return rtc.SignalResponse(pong=timestamp)


def pong_resp(last_ping_timestamp: int, now_ms: int) -> rtc.SignalResponse:
    """``pong_resp`` (Pong): the answer to ``ping_req``, with the server's time in ms."""
    return rtc.SignalResponse(
        pong_resp=rtc.Pong(last_ping_timestamp=last_ping_timestamp, timestamp=now_ms)
    )


def participant_update(infos: Iterable[models.ParticipantInfo]) -> rtc.SignalResponse:
    """``update`` (ParticipantUpdate): full snapshots of the named participants."""
    return rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=infos))


def room_update(room: models.Room) -> rtc.SignalResponse:
    """``room_update`` (RoomUpdate): the room's snapshot (metadata, counts)."""
    return rtc.SignalResponse(room_update=rtc.RoomUpdate(room=room))


def speakers_changed(speakers: Iterable[models.SpeakerInfo]) -> rtc.SignalResponse:
    """``speakers_changed`` (SpeakersChanged): who started, changed level or stopped."""
    return rtc.SignalResponse(speakers_changed=rtc.SpeakersChanged(speakers=speakers))


def connection_quality(updates: Iterable[rtc.ConnectionQualityInfo]) -> rtc.SignalResponse:
    """``connection_quality`` (ConnectionQualityUpdate)."""
    return rtc.SignalResponse(connection_quality=rtc.ConnectionQualityUpdate(updates=updates))


def request_response(
    reason: rtc.RequestResponse.Reason,
    message: str = "",
    *,
    request_id: int = 0,
    add_track: rtc.AddTrackRequest | None = None,
    update_metadata: rtc.UpdateParticipantMetadata | None = None,
) -> rtc.SignalResponse:
    """``request_response`` (RequestResponse): the outcome of a client request, carrying the
    request it answers when there is one."""
    return rtc.SignalResponse(
        request_response=rtc.RequestResponse(
            request_id=request_id,
            reason=reason,
            message=message,
            add_track=add_track,
            update_metadata=update_metadata,
        )
    )


def track_published(cid: str, track: models.TrackInfo) -> rtc.SignalResponse:
    """``track_published`` (TrackPublishedResponse): the client's ``add_track`` accepted."""
    return rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=cid, track=track))


def track_unpublished(track_sid: str) -> rtc.SignalResponse:
    """``track_unpublished`` (TrackUnpublishedResponse): the server took the track down."""
    return rtc.SignalResponse(track_unpublished=rtc.TrackUnpublishedResponse(track_sid=track_sid))


def mute(track_sid: str, muted: bool) -> rtc.SignalResponse:
    """``mute`` (MuteTrackRequest): the server (RoomService) muted a published track."""
    return rtc.SignalResponse(mute=rtc.MuteTrackRequest(sid=track_sid, muted=muted))


def subscribed_quality_update(
    track_sid: str, qualities: Iterable[rtc.SubscribedQuality], codec: str
) -> rtc.SignalResponse:
    """``subscribed_quality_update`` (SubscribedQualityUpdate): which simulcast layers anyone
    receives (dynacast), for the publisher's single ``codec``."""
    qualities = list(qualities)
    return rtc.SignalResponse(
        subscribed_quality_update=rtc.SubscribedQualityUpdate(
            track_sid=track_sid,
            subscribed_qualities=qualities,
            subscribed_codecs=[rtc.SubscribedCodec(codec=codec, qualities=qualities)],
        )
    )
