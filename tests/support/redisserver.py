"""A real ``redis-server`` on a free loopback port, for tests.

No persistence, its own temp dir, bounded start-up wait. ``stop()`` then ``start()`` brings it
back on the same port (empty), which is how the outage tests cut Redis off under live clients.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_port

REDIS_SERVER = "redis-server"


def find_redis_server() -> str:
    """Path of the ``redis-server`` binary; RuntimeError with a hint when absent."""
    path = shutil.which(REDIS_SERVER) or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if path is None:
        raise RuntimeError(
            "redis-server is not on PATH: these tests need a real Redis 7 "
            "(e.g. `apt-get install redis-server`)"
        )
    return path


def _answers_ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            # NOAUTH: up, but password-protected (also ready).
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process. Use as a context manager or call start()/stop()."""

    def __init__(self, port: int | None = None, extra_args: list[str] | None = None) -> None:
        self.binary = find_redis_server()
        self.port = port or free_port()
        self.extra_args = list(extra_args or [])
        self._dir = tempfile.TemporaryDirectory(prefix="trackyard-redis-")
        self.log_path = Path(self._dir.name) / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart, same port) and wait until it answers PING."""
        if self.running():
            return self
        self.proc = subprocess.Popen(
            self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited early ({self.proc.returncode}):\n{self.logs()}"
                )
            if _answers_ping(self.port):
                return self
            time.sleep(0.02)  # a process start-up has no event to await
        self.stop()
        raise TimeoutError(f"redis-server did not answer PING within {timeout}s:\n{self.logs()}")

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
            "--logfile",
            str(self.log_path),
            *self.extra_args,
        ]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Kill the server at once (an abrupt outage, not a graceful shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self, timeout: float = 10.0) -> RedisServer:
        self.stop()
        return self.start(timeout)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisSentinel(RedisServer):
    """A Sentinel watching one master, for connection tests (``redis-server --sentinel``)."""

    def __init__(
        self,
        master: RedisServer,
        master_name: str = "mymaster",
        *,
        master_password: str = "",
        requirepass: str = "",
    ) -> None:
        super().__init__()
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self._dir.name}",
            f"sentinel monitor {master_name} 127.0.0.1 {master.port} 1",
            f"sentinel down-after-milliseconds {master_name} 1000",
        ]
        if master_password:
            lines.append(f"sentinel auth-pass {master_name} {master_password}")
        if requirepass:
            lines.append(f"requirepass {requirepass}")
        # Sentinel rewrites its config file, so it must be a writable file of its own.
        self.config_path = Path(self._dir.name) / "sentinel.conf"
        self.config_path.write_text("\n".join(lines) + "\n")
        self.extra_args = ["--sentinel"]

    def _command(self) -> list[str]:
        return [
            self.binary,
            str(self.config_path),
            "--logfile",
            str(self.log_path),
            *self.extra_args,
        ]


def redis_server_fixture(
    scope: Any = "module", name: str = "redis_server"
) -> Callable[[], Iterator[RedisServer]]:
    """A pytest fixture yielding a running :class:`RedisServer`.

    Fails (never skips) when redis-server is missing: Redis-backed code must not go untested
    silently. Use in a conftest: ``redis_server = redis_server_fixture()``.
    """

    @pytest.fixture(scope=scope, name=name)
    def _redis_server() -> Iterator[RedisServer]:
        try:
            server = RedisServer()
        except RuntimeError as exc:
            pytest.fail(str(exc))
        with server:
            yield server

    return _redis_server
