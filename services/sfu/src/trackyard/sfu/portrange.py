"""Peer connections whose UDP sockets stay inside ``rtc.port_range_start..port_range_end``.

aioice binds every host candidate on an ephemeral port and has no port range option, so the
SFU binds the sockets itself (through ``rtphooks.hook_peer_connection``), for its own peer
connections only:

- ports: a random start inside the range, then the next free port (wrapping around);
- addresses: with ``rtc.node_ip`` set, a single host candidate advertising ``node_ip``, bound
  on ``node_ip`` when it is an address of this host, else on the wildcard address (a public
  IP in front of a 1:1 NAT); without it, aioice's own choice of host addresses;
- STUN: server-reflexive candidates only when STUN servers are configured (``iceServers=[]``
  otherwise, so aiortc's default public STUN server is never contacted);
- TURN: relay candidates only when ``turn_servers`` are passed (``node.use_turn_servers``);
  aiortc uses the first one, with credentials made for ``turn_name``.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import socket
from collections.abc import Iterable, Sequence

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer, RTCPeerConnection

from trackyard.core import turn
from trackyard.core.config import TURNServerConfig
from trackyard.sfu import rtphooks

__all__ = ["PortRangePolicy", "make_peer_connection", "stun_urls"]


class PortRangePolicy:
    """Where to bind ICE sockets and which address to advertise (``rtphooks.IceSocketPolicy``)."""

    def __init__(self, port_range: tuple[int, int] | None, node_ip: str = "") -> None:
        if port_range is not None:
            start, end = port_range
            if not 0 < start <= end <= 65535:
                raise ValueError(f"invalid UDP port range {start}..{end}")
        self.port_range = port_range
        self.node_ip = node_ip.strip()
        self._node_ip_local: bool | None = None

    def host_addresses(self, default: list[str]) -> list[tuple[str, str]]:
        if not self.node_ip:
            return [(a, a) for a in default]
        if self._node_ip_local is None:
            self._node_ip_local = _is_local_address(self.node_ip)
        if self._node_ip_local:
            return [(self.node_ip, self.node_ip)]
        wildcard = "::" if ipaddress.ip_address(self.node_ip).version == 6 else "0.0.0.0"
        return [(wildcard, self.node_ip)]

    def bind_udp(self, address: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        if self.port_range is None:
            return _bind(family, address, 0)
        start, end = self.port_range
        size = end - start + 1
        first = random.randrange(size)
        for i in range(size):
            port = start + (first + i) % size
            try:
                return _bind(family, address, port)
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {start}..{end} on {address}")


def _bind(family: socket.AddressFamily, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock


def _is_local_address(address: str) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        _bind(family, address, 0).close()
    except OSError:
        return False
    return True


def stun_urls(servers: Iterable[str]) -> list[str]:
    """``host:port`` (LiveKit's config form) or ``stun:host:port`` -> ``stun:`` URLs."""
    out = []
    for server in servers:
        server = server.strip()
        if not server:
            continue
        out.append(server if server.startswith(("stun:", "stuns:")) else f"stun:{server}")
    return out


def make_peer_connection(
    port_range: tuple[int, int] | None,
    node_ip: str,
    stun_servers: list[str],
    *,
    decode_unattached: bool = False,
    turn_servers: Sequence[TURNServerConfig] = (),
    turn_name: str = "",
) -> RTCPeerConnection:
    """An ``RTCPeerConnection`` for the SFU: max-bundle, ICE sockets inside ``port_range``,
    ``node_ip`` advertised when set, STUN only if configured, MID-aware RTP routing, and
    simulcast (rid) header extensions negotiable. Media of receivers no UpTrack is attached
    to is dropped, not decoded (``decode_unattached=True`` keeps aiortc's decoding: for test
    clients)."""
    rtphooks.install_simulcast_extensions()
    ice_servers = [RTCIceServer(urls=url) for url in stun_urls(stun_servers)]
    for server in turn_servers:
        username, credential = turn.turn_credentials(server, turn_name)
        ice_servers.append(
            RTCIceServer(urls=turn.turn_url(server), username=username, credential=credential)
        )
    config = RTCConfiguration(
        iceServers=ice_servers,
        bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
    )
    pc = RTCPeerConnection(config)
    rtphooks.hook_peer_connection(
        pc, PortRangePolicy(port_range, node_ip), decode_unattached=decode_unattached
    )
    return pc
