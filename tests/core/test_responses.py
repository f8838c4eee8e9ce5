"""Every outbound signal message builder sets the ``SignalResponse`` oneof it names, with the
wire facts the SDKs need (see the design map, section 2)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from livekit.protocol import models, rtc

from trackyard.core import responses

ROOM = models.Room(name="r", sid="RM_r")
ME = models.ParticipantInfo(sid="PA_me", identity="me")

# (builder, the oneof it sets, a call of it)
BUILDERS: list[tuple[str, str, Callable[[], rtc.SignalResponse]]] = [
    (
        "join",
        "join",
        lambda: responses.join(
            room=ROOM,
            participant=ME,
            others=[models.ParticipantInfo(sid="PA_o", identity="o")],
            ice_servers=[rtc.ICEServer(urls=["turn:t"])],
            ping_interval=5,
            ping_timeout=15,
            region="eu",
            node_id="ND_1",
        ),
    ),
    (
        "reconnect",
        "reconnect",
        lambda: responses.reconnect(ice_servers=[], region="eu", node_id="ND_1"),
    ),
    ("leave", "leave", lambda: responses.leave(models.DisconnectReason.ROOM_DELETED)),
    ("rejoin", "leave", responses.rejoin),
    ("offer", "offer", lambda: responses.offer("v=0", 3)),
    ("answer", "answer", lambda: responses.answer("v=0", 4)),
    ("pong", "pong", lambda: responses.pong(11)),
    ("pong_resp", "pong_resp", lambda: responses.pong_resp(11, 12)),
    ("participant_update", "update", lambda: responses.participant_update([ME])),
    ("room_update", "room_update", lambda: responses.room_update(ROOM)),
    (
        "speakers_changed",
        "speakers_changed",
        lambda: responses.speakers_changed([models.SpeakerInfo(sid="PA_me")]),
    ),
    (
        "connection_quality",
        "connection_quality",
        lambda: responses.connection_quality([rtc.ConnectionQualityInfo(participant_sid="PA_me")]),
    ),
    (
        "request_response",
        "request_response",
        lambda: responses.request_response(rtc.RequestResponse.OK),
    ),
    (
        "track_published",
        "track_published",
        lambda: responses.track_published("c1", models.TrackInfo(sid="TR_1")),
    ),
    ("track_unpublished", "track_unpublished", lambda: responses.track_unpublished("TR_1")),
    ("mute", "mute", lambda: responses.mute("TR_1", True)),
    (
        "subscribed_quality_update",
        "subscribed_quality_update",
        lambda: responses.subscribed_quality_update(
            "TR_1", [rtc.SubscribedQuality(quality=models.VideoQuality.HIGH)], "vp8"
        ),
    ),
]


@pytest.mark.parametrize(
    ("oneof", "build"), [b[1:] for b in BUILDERS], ids=[b[0] for b in BUILDERS]
)
def test_builder_sets_its_oneof(oneof: str, build: Callable[[], rtc.SignalResponse]) -> None:
    response = build()
    assert response.WhichOneof("message") == oneof
    # what goes on the wire decodes to the same message
    assert rtc.SignalResponse.FromString(response.SerializeToString()) == response


def test_every_builder_is_tested() -> None:
    built = {
        name
        for name, value in vars(responses).items()
        if callable(value)
        and not name.startswith("_")
        and getattr(value, "__module__", "") == responses.__name__
        and "SignalResponse" in str(value.__annotations__.get("return", ""))
    }
    assert built == {b[0] for b in BUILDERS}


def test_join_carries_what_the_sdks_require() -> None:
    join = BUILDERS[0][2]().join
    assert join.subscriber_primary
    assert join.ping_interval == 5 and join.ping_timeout == 15
    major, minor, _ = (int(p) for p in join.server_info.version.split("."))
    assert (major, minor) >= (1, 8)  # the SDKs refuse a lower version
    assert join.server_version == join.server_info.version
    assert (join.server_info.region, join.server_info.node_id) == ("eu", "ND_1")
    assert (join.room.sid, join.participant.sid) == ("RM_r", "PA_me")
    assert [p.sid for p in join.other_participants] == ["PA_o"]
    reconnect = responses.reconnect(ice_servers=[], region="eu", node_id="ND_1").reconnect
    assert reconnect.server_info == join.server_info


def test_leave_can_reconnect_follows_the_action() -> None:
    gone = responses.leave(models.DisconnectReason.DUPLICATE_IDENTITY).leave
    assert (gone.action, gone.can_reconnect) == (rtc.LeaveRequest.DISCONNECT, False)
    assert gone.reason == models.DisconnectReason.DUPLICATE_IDENTITY
    again = responses.rejoin().leave
    assert (again.action, again.can_reconnect) == (rtc.LeaveRequest.RECONNECT, True)
    assert again.reason == models.DisconnectReason.STATE_MISMATCH


def test_fields_land_where_the_client_reads_them() -> None:
    assert responses.answer("v=0", 4).answer == rtc.SessionDescription(
        type="answer", sdp="v=0", id=4
    )
    assert responses.offer("v=0", 3).offer.type == "offer"
    assert responses.pong_resp(11, 12).pong_resp == rtc.Pong(last_ping_timestamp=11, timestamp=12)
    refused = responses.request_response(
        rtc.RequestResponse.NOT_ALLOWED, "no", add_track=rtc.AddTrackRequest(cid="c1")
    ).request_response
    assert (refused.reason, refused.message, refused.add_track.cid) == (
        rtc.RequestResponse.NOT_ALLOWED,
        "no",
        "c1",
    )
    assert refused.WhichOneof("request") == "add_track"
    update = responses.subscribed_quality_update(
        "TR_1", [rtc.SubscribedQuality(quality=models.VideoQuality.LOW, enabled=True)], "vp8"
    ).subscribed_quality_update
    assert list(update.subscribed_codecs[0].qualities) == list(update.subscribed_qualities)
    assert update.subscribed_codecs[0].codec == "vp8"
    assert responses.mute("TR_1", True).mute == rtc.MuteTrackRequest(sid="TR_1", muted=True)
