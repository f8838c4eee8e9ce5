"""The ``limit.*`` checks, with LiveKit's error texts (``pkg/service/errors.go``).

Each check returns ``""`` when the value is allowed, else the reason. Sizes and lengths are
UTF-8 bytes, as LiveKit counts them (Go ``len``); 0 disables a limit.
"""

from __future__ import annotations

from collections.abc import Mapping

from trackyard.core.config import LimitConfig

# LiveKit's wording (pkg/service/errors.go, pkg/rtc/participant.go)
IDENTITY_TOO_LONG = "participant identity length exceeds limits"
ROOM_NAME_TOO_LONG = "room name length exceeds limits"
NAME_TOO_LONG = "name length exceeds limits"
METADATA_TOO_LARGE = "metadata size exceeds limits"
ATTRIBUTES_TOO_LARGE = "attribute size exceeds limits"


def _size(text: str) -> int:
    return len(text.encode())


def attributes_size(attributes: Mapping[str, str]) -> int:
    """Keys plus values, as LiveKit's ``CheckAttributesSize`` sums them."""
    return sum(_size(k) + _size(v) for k, v in attributes.items())


def merged_attributes(current: Mapping[str, str], update: Mapping[str, str]) -> dict[str, str]:
    """The attributes after ``update`` (an empty value deletes its key, as in LiveKit)."""
    out = dict(current)
    for key, value in update.items():
        if value:
            out[key] = value
        else:
            out.pop(key, None)
    return out


def check_identity(limit: LimitConfig, identity: str) -> str:
    cap = limit.max_participant_identity_length
    if cap and _size(identity) > cap:
        return f"{IDENTITY_TOO_LONG}: max length {cap}"
    return ""


def check_room_name(limit: LimitConfig, room: str) -> str:
    cap = limit.max_room_name_length
    if cap and _size(room) > cap:
        return f"{ROOM_NAME_TOO_LONG}: max length {cap}"
    return ""


def check_name(limit: LimitConfig, name: str) -> str:
    cap = limit.max_participant_name_length
    if cap and _size(name) > cap:
        return f"{NAME_TOO_LONG}: max length {cap}"
    return ""


def check_metadata(limit: LimitConfig, metadata: str) -> str:
    cap = limit.max_metadata_size
    if cap and _size(metadata) > cap:
        return f"{METADATA_TOO_LARGE}: max size {cap} bytes"
    return ""


def check_attributes(limit: LimitConfig, attributes: Mapping[str, str]) -> str:
    cap = limit.max_attributes_size
    if cap and attributes_size(attributes) > cap:
        return f"{ATTRIBUTES_TOO_LARGE}: max size {cap} bytes"
    return ""


def check_join(
    limit: LimitConfig,
    *,
    room: str,
    identity: str,
    name: str,
    metadata: str,
    attributes: Mapping[str, str],
) -> str:
    """Why a join with this token must be refused (LiveKit answers 400), or ``""``."""
    return (
        check_identity(limit, identity)
        or check_room_name(limit, room)
        or check_name(limit, name)
        or check_metadata(limit, metadata)
        or check_attributes(limit, attributes)
    )
