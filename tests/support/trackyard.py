"""Start real Trackyard processes for tests and wait until they serve."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.ports import free_port

TRACKYARD = str(Path(sys.executable).with_name("trackyard"))
API_KEY = "devkey"
API_SECRET = "secret"


class TrackyardProcess:
    """``trackyard <command>`` with a YAML config, logs kept in a file for failure reports."""

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        *,
        command: str = "dev",
        port: int | None = None,
        ready_port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.config = {"port": self.port, "bind_addresses": ["127.0.0.1"], **(config or {})}
        self.command = command
        self.ready_port = ready_port or self.port  # whose /readyz says it serves
        self.extra_env = env or {}
        self._dir = tempfile.TemporaryDirectory(prefix="trackyard-test-")
        self.config_path = Path(self._dir.name) / "config.yaml"
        self.log_path = Path(self._dir.name) / "trackyard.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> TrackyardProcess:
        self.config_path.write_text(yaml.safe_dump(self.config))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        env.pop("LIVEKIT_CONFIG", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [TRACKYARD, self.command, "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"trackyard exited early ({self.proc.returncode}):\n{self.logs()}"
                )
            try:
                url = f"http://127.0.0.1:{self.ready_port}/readyz"
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"trackyard did not become ready in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._dir.cleanup()

    def __enter__(self) -> TrackyardProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
