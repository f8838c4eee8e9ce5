"""The one refusal type and its status table: every code has an HTTP status, a Twirp code and
a close reason, and they agree with Twirp, LiveKit and what the tests of the real server see."""

from __future__ import annotations

import pytest

from trackyard.core import messages
from trackyard.core.refusal import CloseReason, Code, Refusal, status

# Twirp's ServerHTTPStatusFromErrorCode (twitchtv/twirp errors.go), which LiveKit's RoomService
# answers with; spelled out here independently of the table under test.
TWIRP_HTTP = {
    "canceled": 408,
    "unknown": 500,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
}

# RFC 6455 close codes an endpoint may send in a close frame (1005, 1006, 1015 are reserved).
SENDABLE = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011}


def test_codes_are_twirps_and_nothing_else() -> None:
    assert {c.value for c in Code} == set(TWIRP_HTTP)


@pytest.mark.parametrize("code", list(Code), ids=[c.value for c in Code])
def test_every_code_has_status_twirp_code_and_close_reason(code: Code) -> None:
    refusal = Refusal(code, "why")
    assert refusal.status == TWIRP_HTTP[code.value] == status(code).http
    assert refusal.twirp_code == code.value
    assert isinstance(refusal.close_reason, CloseReason)
    assert refusal.close_reason.value in SENDABLE


@pytest.mark.parametrize("code", list(Code), ids=[c.value for c in Code])
def test_close_reason_follows_who_is_at_fault(code: Code) -> None:
    """Server-side trouble closes as a server error (1011); the client's credentials or state
    as a policy refusal (1008) or a bad frame (1003/1007/1009), never as a normal close."""
    close = Refusal(code, "").close_reason
    assert close is not CloseReason.ENDED
    if status(code).http >= 500 and code is not Code.UNIMPLEMENTED:
        assert close is CloseReason.SERVER_ERROR
    if code in (Code.UNAUTHENTICATED, Code.PERMISSION_DENIED, Code.NOT_FOUND):
        assert close is CloseReason.REFUSED


def test_the_edges_frame_and_bus_refusals_keep_their_close_codes() -> None:
    """What tests/e2e/test_bad_input.py asserts of the real edge, and the bus-outage close."""
    assert Refusal(Code.MALFORMED, "").close_reason == 1007
    assert Refusal(Code.UNIMPLEMENTED, "").close_reason == 1003  # text frames
    assert Refusal(Code.RESOURCE_EXHAUSTED, "").close_reason == 1009
    assert Refusal(Code.UNAVAILABLE, "").close_reason == 1011


def test_livekit_join_refusal_statuses() -> None:
    """The statuses LiveKit's rtcservice answers a refused /rtc upgrade with, which the SDKs
    read back from /rtc/validate (401/403 fail connect() at once)."""
    assert Refusal(Code.UNAUTHENTICATED, "").status == 401
    assert Refusal(Code.PERMISSION_DENIED, "").status == 403
    assert Refusal(Code.NOT_FOUND, "").status == 404
    assert Refusal(Code.INVALID_ARGUMENT, "").status == 400  # limits (ValidateConnectRequest)
    assert Refusal(Code.UNAVAILABLE, "").status == 503


def test_a_code_from_elsewhere() -> None:
    assert Code.parse("not_found") is Code.NOT_FOUND
    assert Code.parse("no-such-code") is Code.UNKNOWN
    assert Refusal("internal", "x").code is Code.INTERNAL  # type: ignore[arg-type]
    assert str(Refusal(Code.NOT_FOUND, "no room r")) == "not_found: no room r"


def test_session_closed_carries_a_refusal_across_the_bus() -> None:
    sent = messages.SessionClosed.refused(Refusal(Code.PERMISSION_DENIED, "room r is full"))
    got = messages.SessionClosed.model_validate_json(sent.model_dump_json()).refusal("refused")
    assert (got.code, got.reason) == (Code.PERMISSION_DENIED, "room r is full")
    ended = messages.SessionClosed.ended("")
    assert ended.code == "" and ended.refusal("join refused").code is Code.UNAVAILABLE
    assert ended.refusal("join refused").reason == "join refused"
