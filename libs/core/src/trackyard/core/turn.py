"""ICE servers handed to clients (``JoinResponse``/``ReconnectResponse.ice_servers``), as LiveKit
builds them (``pkg/service/roommanager.go`` ``iceServersForParticipant``).

- one ``ICEServer`` per ``rtc.turn_servers`` entry, URL ``turn:host:port?transport=udp|tcp`` or
  ``turns:host:port?transport=tcp`` (protocol ``tls``);
- with a ``secret``: TURN REST ephemeral credentials, coturn's ``use-auth-secret`` scheme:
  username ``<unix expiry>:<participant sid>``, credential
  ``base64(HMAC-SHA1(secret, username))``, valid ``credential_ttl`` seconds (4 h by default);
  otherwise the static ``username``/``credential``;
- then one ``ICEServer`` holding every ``rtc.stun_servers`` URL.

Unlike LiveKit, no public STUN server (Google's) is added when none is configured: a client
reaches the SFU on its advertised address, and test networks have no route to the Internet.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable

from livekit.protocol import rtc

from trackyard.core.config import RTCConfig, TURNServerConfig

__all__ = ["ice_servers", "stun_urls", "turn_credentials", "turn_url"]


def turn_url(server: TURNServerConfig) -> str:
    scheme = "turns" if server.protocol == "tls" else "turn"
    transport = "udp" if server.protocol == "udp" else "tcp"
    host = f"[{server.host}]" if ":" in server.host else server.host
    return f"{scheme}:{host}:{server.port}?transport={transport}"


def turn_credentials(
    server: TURNServerConfig, name: str, now: float | None = None
) -> tuple[str, str]:
    """``(username, credential)`` for ``name`` (a participant sid, or a node id)."""
    if not server.secret:
        return server.username, server.credential
    expiry = int(time.time() if now is None else now) + server.credential_ttl
    username = f"{expiry}:{name}"
    digest = hmac.new(server.secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def stun_urls(servers: Iterable[str]) -> list[str]:
    """``host:port`` (LiveKit's config form) or ``stun:host:port`` -> ``stun:`` URLs."""
    out = []
    for server in servers:
        server = server.strip()
        if server:
            out.append(server if server.startswith(("stun:", "stuns:")) else f"stun:{server}")
    return out


def ice_servers(config: RTCConfig, name: str, now: float | None = None) -> list[rtc.ICEServer]:
    """The ICE servers for participant ``name`` (its sid), fresh credentials each call."""
    out = []
    for server in config.turn_servers:
        username, credential = turn_credentials(server, name, now)
        out.append(rtc.ICEServer(urls=[turn_url(server)], username=username, credential=credential))
    stun = stun_urls(config.stun_servers)
    if stun:
        out.append(rtc.ICEServer(urls=stun))
    return out
