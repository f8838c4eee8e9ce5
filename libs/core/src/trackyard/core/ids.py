"""Ids with LiveKit's prefixes; the SDKs check them."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits

ROOM = "RM_"
PARTICIPANT = "PA_"
TRACK = "TR_"
NODE = "ND_"
SESSION = "SE_"
REQUEST = "RQ_"
# a node's relay participant on another node of a spanning room (hidden from clients): the edge
# refuses client tokens with this identity prefix
RELAY_IDENTITY_PREFIX = "relay:"


def new_id(prefix: str, length: int = 12) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))
