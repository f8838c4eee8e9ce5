"""HAProxy (Debian's ``haproxy``, installed by ``scripts/bootstrap --test``) in front of edges.

HTTP mode (WebSockets pass through after the upgrade), ``balance first``: every client goes to
the first healthy edge, so losing that edge takes all sockets down at once. A connection
refused by a dead edge, or an upgrade a draining edge refuses with 503, is retried on the next
one (``retry-on`` + ``option redispatch``: the retry avoids the server that failed), and
health checks of ``/readyz`` every 200 ms take a dead or draining edge out of rotation.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.ports import free_port

CONFIG = """
global
  maxconn 512
  stats socket {admin} level admin
defaults
  mode http
  timeout connect 1s
  timeout client 120s
  timeout server 120s
  timeout tunnel 120s
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response 503
listen edges
  bind 127.0.0.1:{port}
  balance first
  option httpchk
  http-check send meth GET uri /readyz
  http-check expect status 200
{servers}
"""


class HAProxy:
    def __init__(self, backends: list[int]) -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise RuntimeError("haproxy is not installed: run scripts/bootstrap --test")
        self.binary = binary
        self.backends = backends
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="trackyard-haproxy-")
        servers = "\n".join(
            f"  server e{i} 127.0.0.1:{p} check inter 200 fall 2 rise 2"
            for i, p in enumerate(backends)
        )
        self.config = Path(self._dir.name) / "haproxy.cfg"
        self.admin = Path(self._dir.name) / "admin.sock"
        self.config.write_text(CONFIG.format(port=self.port, servers=servers, admin=self.admin))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> HAProxy:
        log = open(Path(self._dir.name) / "haproxy.log", "wb")  # noqa: SIM115 - lives with proc
        self.proc = subprocess.Popen(
            [self.binary, "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # no event for "listening": probe the port
            assert self.proc.poll() is None, (Path(self._dir.name) / "haproxy.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise TimeoutError("haproxy did not listen")

    def states(self) -> list[str]:
        """Each backend's health as HAProxy sees it (``UP``, ``DOWN``, ``UP 1/2``, ...), in
        the order given."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.admin))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        header, *rows = data.decode().lstrip("# ").splitlines()
        cols = header.split(",")
        name, status = cols.index("svname"), cols.index("status")
        found = {r.split(",")[name]: r.split(",")[status] for r in rows if r}
        return [found[f"e{i}"] for i in range(len(self.backends))]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self._dir.cleanup()

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
