from __future__ import annotations

import datetime as dt
import time

import pytest
from livekit import api
from livekit.protocol import models

from trackyard.core.auth import KeyProvider, check_join, create_token, verify_token
from trackyard.core.refusal import Refusal

KEYS = KeyProvider({"k": "s" * 32})


def _tok(**kw: object) -> str:
    return create_token("k", "s" * 32, identity="id", **kw)  # type: ignore[arg-type]


def test_round_trip_with_livekit_api_token() -> None:
    tok = (
        api.AccessToken("k", "s" * 32)
        .with_identity("alice")
        .with_name("Alice")
        .with_metadata("m")
        .with_attributes({"a": "1"})
        .with_grants(
            api.VideoGrants(
                room_join=True,
                room="r",
                can_publish=False,
                can_publish_sources=["microphone"],
                hidden=True,
            )
        )
        .to_jwt()
    )
    claims = verify_token(tok, KEYS)
    assert (claims.identity, claims.name, claims.metadata, claims.attributes) == (
        "alice",
        "Alice",
        "m",
        {"a": "1"},
    )
    perm = claims.video.permission()
    assert not perm.can_publish and perm.can_subscribe and perm.hidden
    assert list(perm.can_publish_sources) == [models.TrackSource.MICROPHONE]
    assert check_join(claims, None) == "r"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "no access token"),
        ("abc", "not a JWT"),
        (create_token("other", "s" * 32, identity="x"), "unknown API key"),
        (create_token("k", "t" * 32, identity="x"), "signature"),
        (create_token("k", "s" * 32, identity="x", ttl=dt.timedelta(seconds=-30)), "expired"),
        (create_token("k", "s" * 32, identity="x", not_before=time.time() + 3600), "nbf"),
    ],
)
def test_invalid_tokens(token: str, reason: str) -> None:
    with pytest.raises(Refusal) as err:
        verify_token(token, KEYS)
    assert err.value.status == 401 and reason in err.value.reason


def test_join_checks() -> None:
    with pytest.raises(Refusal) as err:
        check_join(verify_token(_tok(grants={"room": "r"}), KEYS), None)
    assert err.value.status == 403 and "roomJoin" in err.value.reason
    with pytest.raises(Refusal) as err:
        check_join(verify_token(_tok(grants={"roomJoin": True, "room": "r"}), KEYS), "s")
    assert err.value.status == 403
    with pytest.raises(Refusal) as err:
        check_join(verify_token(_tok(grants={"roomJoin": True}), KEYS), None)
    assert "names no room" in err.value.reason


def test_relay_identities_are_reserved() -> None:
    """A client named like a node's relay participant would be hidden from other nodes."""
    token = create_token(
        "k", "s" * 32, identity="relay:ND_x", grants={"roomJoin": True, "room": "r"}
    )
    with pytest.raises(Refusal) as err:
        check_join(verify_token(token, KEYS), "r")
    assert err.value.status == 403 and "'relay:'" in err.value.reason
