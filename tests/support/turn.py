"""A real coturn ``turnserver`` for tests, on the test namespace's address.

Started with ``use-auth-secret`` + ``static-auth-secret`` (TURN REST ephemeral credentials, what
``rtc.turn_servers[].secret`` makes), listening on ``10.213.0.1`` (UDP and TCP, one free port)
and relaying from that address on its own port range (by default below the kernel's ephemeral
ports, so no client socket on the same address can share a relay port), no TLS, its own temp
dir and log file. Start-up is bounded; ``stop()`` kills it. Its log names each allocation with
the username, which is how tests prove a client's media went through the relay.
"""

from __future__ import annotations

import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_port

TURNSERVER = "turnserver"
NETNS_ADDRESS = "10.213.0.1"
REALM = "trackyard.test"

# "session 000000000000000001: realm <trackyard.test> user <1712345678:PA_x>: incoming packet
# ALLOCATE processed, success"
_ALLOCATED = re.compile(
    r"session (\d+): realm <[^>]*> user <([^>]*)>: incoming packet ALLOCATE processed, success"
)


def find_turnserver() -> str:
    path = shutil.which(TURNSERVER)
    if path is None:
        pytest.fail(
            "turnserver is not installed: run scripts/bootstrap --test (installs Debian's coturn)"
        )
    return path


def ephemeral_ports() -> tuple[int, int]:
    """The namespace's ephemeral port range (``net.ipv4.ip_local_port_range``): the ports the
    kernel picks for sockets bound to port 0, as libwebrtc binds its host candidates."""
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class TurnServer:
    """One coturn process. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        host: str = NETNS_ADDRESS,
        *,
        relay_ports: tuple[int, int] = (30000, 30199),
        secret: str | None = None,
    ) -> None:
        self.binary = find_turnserver()
        self.host = host
        self.port = free_port(host)
        self.relay_ports = relay_ports
        self.secret = secret or secrets.token_hex(16)
        self._dir = tempfile.TemporaryDirectory(prefix="trackyard-turn-")
        self.log_path = Path(self._dir.name) / "turn.log"
        self.config_path = Path(self._dir.name) / "turnserver.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        lines = [
            f"listening-ip={self.host}",
            f"relay-ip={self.host}",
            f"listening-port={self.port}",
            f"min-port={self.relay_ports[0]}",
            f"max-port={self.relay_ports[1]}",
            "use-auth-secret",
            f"static-auth-secret={self.secret}",
            f"realm={REALM}",
            "no-tls",
            "no-dtls",
            "no-cli",
            "no-multicast-peers",
            "no-software-attribute",
            "fingerprint",
            "verbose",
            "simple-log",
            f"log-file={self.log_path}",
            f"userdb={Path(self._dir.name) / 'turndb'}",
            f"pidfile={Path(self._dir.name) / 'turnserver.pid'}",
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> TurnServer:
        """Start and wait until its TCP listener accepts connections."""
        if self.running():
            return self
        self.config_path.write_text(self._config())
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"turnserver exited early ({self.proc.returncode}):\n{self.logs()}"
                )
            # UDP and TCP listeners open together, after the relay ports are set up
            if _accepts_tcp(self.host, self.port) and "UDP listener opened" in self.logs():
                return self
            time.sleep(0.02)  # a process start-up has no event to await
        self.stop()
        raise TimeoutError(f"turnserver did not listen within {timeout}s:\n{self.logs()}")

    def turn_servers(self, *protocols: str, ttl: int = 0) -> list[dict[str, Any]]:
        """``rtc.turn_servers`` entries for this server (LiveKit's shape), one per protocol."""
        return [
            {
                "host": self.host,
                "port": self.port,
                "protocol": protocol,
                "secret": self.secret,
                **({"ttl": ttl} if ttl else {}),
            }
            for protocol in (protocols or ("udp",))
        ]

    def allocations(self) -> list[tuple[str, str]]:
        """``(session id, username)`` of every successful ALLOCATE so far."""
        return _ALLOCATED.findall(self.logs(limit=None))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def logs(self, limit: int | None = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text if limit is None else text[-limit:]

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> TurnServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
