"""Run the real livekit-agents worker (tests/agents/worker_app.py, in .venv-agents) as a
process, and follow what it prints."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
AGENTS_PYTHON = ROOT / ".venv-agents" / "bin" / "python"
WORKER_APP = Path(__file__).with_name("worker_app.py")

Event = dict[str, Any]


class AgentWorker:
    """``worker_app.py`` with the given flags; ``events`` are its JSON lines."""

    def __init__(self, url: str, *args: str) -> None:
        self.url = url
        self.args = list(args)
        self.events: list[Event] = []
        self._cond = threading.Condition()
        fd, path = tempfile.mkstemp(prefix="agent-worker-", suffix=".log")
        self._log = os.fdopen(fd, "wb")
        self._log_path = path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentWorker:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for var in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
            env.pop(var, None)
        self.proc = subprocess.Popen(
            [str(AGENTS_PYTHON), str(WORKER_APP), "--url", self.url, *self.args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,  # its job threads/processes die with it
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self.events.append({"event": "exited"})
            self._cond.notify_all()

    def wait_sync(self, pred: Callable[[Event], bool], timeout: float) -> Event:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if pred(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching worker event in {timeout}s:\n{self.logs()}")
                self._cond.wait(remaining)

    async def wait(self, kind: str, timeout: float = 30.0, **fields: Any) -> Event:
        def pred(e: Event) -> bool:
            return e.get("event") == kind and all(e.get(k) == v for k, v in fields.items())

        return await asyncio.to_thread(self.wait_sync, pred, timeout)

    def seen(self, kind: str, **fields: Any) -> list[Event]:
        with self._cond:
            return [
                e
                for e in self.events
                if e.get("event") == kind and all(e.get(k) == v for k, v in fields.items())
            ]

    @property
    def worker_id(self) -> str:
        return str(self.wait_sync(lambda e: e.get("event") == "registered", 0)["worker_id"])

    def logs(self) -> str:
        return Path(self._log_path).read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    async def __aenter__(self) -> AgentWorker:
        self.start()
        await self.wait("registered", timeout=60)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await asyncio.to_thread(self.stop)


class Balancer:
    """A TCP load balancer in front of signal edges: one public port, a switchable target.
    Connections to a target that died are cut (as a real balancer's would be)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> Balancer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def switch(self, target_port: int) -> None:
        self.target_port = target_port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._links.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links.difference_update((writer, up_writer))

    async def close_links(self) -> None:
        """Cut every open connection (their edge died)."""
        for w in list(self._links):
            w.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.close_links()
