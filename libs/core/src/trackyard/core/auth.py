"""Access tokens: HS256 JWTs signed with the secret of the API key named in ``iss``."""

from __future__ import annotations

import datetime as dt
import json
import time
import warnings
from collections.abc import Mapping
from typing import Any

import jwt
import jwt.warnings
from livekit.protocol import models
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from trackyard.core.ids import RELAY_IDENTITY_PREFIX
from trackyard.core.refusal import Code, Refusal

# Secret length is enforced by config (outside dev mode), so PyJWT's warning is noise here.
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)

DEFAULT_TTL = dt.timedelta(hours=6)
CLOCK_LEEWAY_SECONDS = 10


class VideoGrants(BaseModel):
    """LiveKit's ``video`` grant, camelCase on the wire."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    room_create: bool = False
    room_list: bool = False
    room_record: bool = False
    room_admin: bool = False
    room_join: bool = False
    room: str = ""
    can_publish: bool | None = None
    can_subscribe: bool | None = None
    can_publish_data: bool | None = None
    can_publish_sources: list[str] | None = None
    can_update_own_metadata: bool | None = None
    ingress_admin: bool = False
    hidden: bool = False
    recorder: bool = False
    agent: bool = False

    def permission(self) -> models.ParticipantPermission:
        """The participant permission these grants give (unset means allowed)."""
        sources = [_SOURCES[s] for s in self.can_publish_sources or () if s in _SOURCES]
        return models.ParticipantPermission(
            can_subscribe=self.can_subscribe is not False,
            can_publish=self.can_publish is not False,
            can_publish_data=self.can_publish_data is not False,
            can_publish_sources=sources,
            hidden=self.hidden,
            can_update_metadata=bool(self.can_update_own_metadata),
            recorder=self.recorder,
            agent=self.agent,
        )


_SOURCES: dict[str, models.TrackSource] = {
    "camera": models.TrackSource.CAMERA,
    "microphone": models.TrackSource.MICROPHONE,
    "screen_share": models.TrackSource.SCREEN_SHARE,
    "screen_share_audio": models.TrackSource.SCREEN_SHARE_AUDIO,
}


class Claims(BaseModel):
    """The verified content of an access token."""

    model_config = ConfigDict(extra="ignore")

    api_key: str
    identity: str = ""
    name: str = ""
    metadata: str = ""
    attributes: dict[str, str] = Field(default_factory=dict)
    kind: str = ""
    video: VideoGrants = Field(default_factory=VideoGrants)


class KeyProvider:
    """API key -> secret."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._keys = dict(keys)

    def secret(self, key: str) -> str | None:
        return self._keys.get(key)

    def any_key(self) -> tuple[str, str]:
        key = next(iter(self._keys))
        return key, self._keys[key]


def create_token(
    api_key: str,
    secret: str,
    *,
    identity: str = "",
    name: str = "",
    metadata: str = "",
    attributes: Mapping[str, str] | None = None,
    grants: VideoGrants | Mapping[str, Any] | None = None,
    ttl: dt.timedelta = DEFAULT_TTL,
    not_before: float | None = None,
) -> str:
    video = grants if isinstance(grants, VideoGrants) else VideoGrants.model_validate(grants or {})
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": api_key,
        "nbf": int(not_before) if not_before is not None else now,
        "exp": now + int(ttl.total_seconds()),
        "video": video.model_dump(by_alias=True, exclude_defaults=True),
    }
    if identity:
        payload["sub"] = identity
        payload["jti"] = identity
    if name:
        payload["name"] = name
    if metadata:
        payload["metadata"] = metadata
    if attributes:
        payload["attributes"] = dict(attributes)
    return jwt.encode(payload, secret, algorithm="HS256")


def verify_token(token: str, keys: KeyProvider) -> Claims:
    """Check signature, ``exp`` and ``nbf``; raise an ``unauthenticated`` :class:`Refusal`."""
    if not token:
        raise Refusal(
            Code.UNAUTHENTICATED,
            "no access token: pass it as 'Authorization: Bearer' or access_token",
        )
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise Refusal(Code.UNAUTHENTICATED, "invalid access token: not a JWT") from None
    api_key = unverified.get("iss")
    if not isinstance(api_key, str) or not api_key:
        raise Refusal(Code.UNAUTHENTICATED, "invalid access token: no API key in 'iss'")
    secret = keys.secret(api_key)
    if secret is None:
        raise Refusal(Code.UNAUTHENTICATED, f"invalid access token: unknown API key {api_key!r}")
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            leeway=CLOCK_LEEWAY_SECONDS,
            options={"require": ["exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise Refusal(Code.UNAUTHENTICATED, "invalid access token: expired") from None
    except jwt.ImmatureSignatureError:
        raise Refusal(Code.UNAUTHENTICATED, "invalid access token: not valid yet (nbf)") from None
    except jwt.InvalidSignatureError:
        raise Refusal(
            Code.UNAUTHENTICATED, "invalid access token: signature does not match"
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        raise Refusal(
            Code.UNAUTHENTICATED, f"invalid access token: missing '{exc.claim}'"
        ) from None
    except jwt.PyJWTError as exc:
        raise Refusal(Code.UNAUTHENTICATED, f"invalid access token: {exc}") from None
    try:
        attributes = payload.get("attributes") or {}
        if isinstance(attributes, str):
            attributes = json.loads(attributes)
        return Claims(
            api_key=api_key,
            identity=str(payload.get("sub") or ""),
            name=str(payload.get("name") or ""),
            metadata=str(payload.get("metadata") or ""),
            attributes=attributes,
            kind=str(payload.get("kind") or ""),
            video=VideoGrants.model_validate(payload.get("video") or {}),
        )
    except (ValidationError, ValueError) as exc:
        raise Refusal(
            Code.UNAUTHENTICATED, f"invalid access token: malformed claims ({exc})"
        ) from None


def check_join(claims: Claims, room: str | None) -> str:
    """The room this token may join; raise an unauthenticated/permission_denied refusal."""
    video = claims.video
    if not video.room_join:
        raise Refusal(Code.PERMISSION_DENIED, "permission denied: token lacks the roomJoin grant")
    if not claims.identity:
        raise Refusal(Code.UNAUTHENTICATED, "invalid access token: no identity ('sub')")
    if claims.identity.startswith(RELAY_IDENTITY_PREFIX):  # others' nodes would hide it
        raise Refusal(
            Code.PERMISSION_DENIED,
            f"permission denied: identities starting with {RELAY_IDENTITY_PREFIX!r} are"
            " reserved for the server's relays between nodes",
        )
    if room and video.room and room != video.room:
        raise Refusal(
            Code.PERMISSION_DENIED,
            f"permission denied: token is for room {video.room!r}, not {room!r}",
        )
    target = room or video.room
    if not target:
        raise Refusal(Code.PERMISSION_DENIED, "permission denied: token names no room")
    return target
