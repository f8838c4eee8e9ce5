"""The Janus WebRTC Server as a comparison peer for ``benchmarks.forwarding``.

Janus (Debian's package ``janus``, 1.1.x) runs as a child process of the benchmark with a
configuration written to a temporary folder: the VideoRoom plugin and the plain HTTP transport
(on 127.0.0.1) only, every other plugin, transport, logger and event handler disabled, and
either its default threading (one event loop and thread per handle) or a fixed pool of event
loops (``event_loops = N`` in ``janus.jcfg``). Janus leaves loopback interfaces out of ICE, so
it must run inside the benchmark's own network namespace (``scripts/netns``: a veth pair with a
test address that exists only there): ICE is pinned to that address (``ice_enforce_list``), so
media flows between addresses of the namespace and nowhere else.

The VideoRoom is driven over Janus's HTTP API: one session, one handle per participant, the
plugin's asynchronous answers read from the session's long poll and matched by transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import psutil

JANUS_BIN = "/usr/bin/janus"
PLUGIN = "janus.plugin.videoroom"
START_TIMEOUT = 20.0
REQUEST_TIMEOUT = 30.0


class JanusError(RuntimeError):
    pass


def ensure_installed() -> None:
    """Install Debian's ``janus`` when its binary is missing (needs the package registry, so
    call it before entering the network namespace)."""
    if os.path.exists(JANUS_BIN):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [*sudo, "apt-get", "install", "-y", "--no-install-recommends", "janus"]
    print("janus: not installed, installing Debian's package janus", flush=True)
    if subprocess.run(install, env=env, check=False).returncode != 0:
        # a fresh machine may not have the package lists yet
        subprocess.run([*sudo, "apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    if not os.path.exists(JANUS_BIN):
        raise JanusError(f"{JANUS_BIN} still missing after installing the janus package")


def janus_version() -> str:
    out = subprocess.run([JANUS_BIN, "--version"], capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("Janus version"):
            return line.split("(")[-1].rstrip(")")
    return "unknown"


def namespace_address() -> str:
    """The IPv4 address of the benchmark's network namespace (its veth), for ICE. Refuses to
    run outside the namespace, where that would be a real interface."""
    if os.environ.get("TRACKYARD_NETNS") != "1":
        raise JanusError("Janus runs only inside scripts/netns (TRACKYARD_NETNS=1)")
    for name, addresses in psutil.net_if_addrs().items():
        if name == "lo":
            continue
        for a in addresses:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    raise JanusError("no non-loopback IPv4 address in the network namespace")


def _modules_folder(kind: str) -> Path:
    """Where Debian puts Janus's loadable modules (``/usr/lib/<multiarch>/janus/<kind>``)."""
    found = sorted(Path("/usr/lib").glob(f"*/janus/{kind}"))
    if not found:
        raise JanusError(f"no /usr/lib/*/janus/{kind} folder: is the janus package installed?")
    return found[0]


def _others(kind: str, keep: str) -> str:
    """Janus's ``disable`` list: every module of a kind but ``keep``."""
    folder = _modules_folder(kind)
    names = sorted(p.name for p in folder.glob("*.so") if p.name != keep)
    return ",".join(names)


def _die_with_parent() -> None:
    """In the child before exec: a benchmark that dies must not leave Janus running."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_tcp_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class JanusServer:
    """One Janus process with the VideoRoom plugin, its HTTP API on 127.0.0.1."""

    def __init__(self, ice_address: str, event_loops: int | None = None) -> None:
        self.ice_address = ice_address
        self.event_loops = event_loops
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/janus"

    def _write_config(self, folder: Path) -> Path:
        loops = f"\tevent_loops = {self.event_loops}\n" if self.event_loops else ""
        (folder / "janus.jcfg").write_text(
            "general: {\n"
            f'\tconfigs_folder = "{folder}"\n'
            f'\tplugins_folder = "{_modules_folder("plugins")}"\n'
            f'\ttransports_folder = "{_modules_folder("transports")}"\n'
            f'\tevents_folder = "{_modules_folder("events")}"\n'
            f'\tloggers_folder = "{_modules_folder("loggers")}"\n'
            "\tdebug_level = 3\n"  # warnings and errors only: logging is not what we measure
            "\tsession_timeout = 120\n"
            f"{loops}"
            "}\n"
            "media: {\n}\n"
            "nat: {\n"
            "\tnice_debug = false\n"
            f'\tice_enforce_list = "{self.ice_address}"\n'
            "}\n"
            f'plugins: {{\n\tdisable = "{_others("plugins", "libjanus_videoroom.so")}"\n}}\n'
            f'transports: {{\n\tdisable = "{_others("transports", "libjanus_http.so")}"\n}}\n'
            f'loggers: {{\n\tdisable = "{_others("loggers", "")}"\n}}\n'
            "events: {\n\tbroadcast = false\n}\n"
        )
        (folder / "janus.transport.http.jcfg").write_text(
            "general: {\n"
            '\tjson = "plain"\n'
            '\tbase_path = "/janus"\n'
            "\thttp = true\n"
            f"\tport = {self.port}\n"
            '\tip = "127.0.0.1"\n'
            "\thttps = false\n"
            "}\n"
            "admin: {\n\tadmin_http = false\n\tadmin_https = false\n}\n"
        )
        (folder / f"{PLUGIN}.jcfg").write_text("general: {\n}\n")  # rooms come over the API
        return folder / "janus.jcfg"

    async def start(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="janus-bench-")
        folder = Path(self._dir.name)
        self.port = _free_tcp_port("127.0.0.1")
        config = self._write_config(folder)
        log = folder / "janus.log"
        self.proc = await asyncio.create_subprocess_exec(
            JANUS_BIN,
            "-C",
            str(config),
            "-F",
            str(folder),
            "-N",  # no stdout logging; warnings go to the log file
            "-L",
            str(log),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.returncode is not None:
                    raise JanusError(f"janus exited ({self.proc.returncode}): {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.url + "/info") as response:
                        if response.status == 200:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    raise JanusError(f"janus did not answer in {START_TIMEOUT} s")
                await asyncio.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        if self._dir is None:
            return ""
        path = Path(self._dir.name) / "janus.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def cpu(self) -> tuple[float, float]:
        """User and system CPU seconds of the Janus process so far, all its threads."""
        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user), float(times.system)

    def threads(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).num_threads())

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir.name, ignore_errors=True)
            self._dir = None


class JanusSession:
    """A Janus API session over HTTP: requests by POST, events by long poll."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT + 40),
        )
        self.id = 0
        self._transactions = (f"t{i}" for i in itertools.count())
        self._events: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # Janus's own events on a handle ("webrtcup", "media", "hangup"), by (handle, kind)
        self._seen: dict[tuple[int, str], asyncio.Event] = {}
        self._poller: asyncio.Task[None] | None = None

    async def _post(self, path: str, message: dict[str, Any]) -> dict[str, Any]:
        message["transaction"] = transaction = next(self._transactions)
        async with self.http.post(self.url + path, json=message) as response:
            reply: dict[str, Any] = await response.json(content_type=None)
        if reply.get("transaction") != transaction:
            raise JanusError(f"reply to another transaction: {reply}")
        if reply.get("janus") == "error":
            raise JanusError(f"{message.get('janus')}: {reply.get('error')}")
        return reply

    async def create(self) -> None:
        reply = await self._post("", {"janus": "create"})
        self.id = int(reply["data"]["id"])
        self._poller = asyncio.ensure_future(self._poll())

    async def attach(self) -> int:
        reply = await self._post(f"/{self.id}", {"janus": "attach", "plugin": PLUGIN})
        return int(reply["data"]["id"])

    async def detach(self, handle: int) -> None:
        await self._post(f"/{self.id}/{handle}", {"janus": "detach"})

    async def request(self, handle: int, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous plugin request (create, destroy, ...): the plugin's data."""
        reply = await self._post(f"/{self.id}/{handle}", {"janus": "message", "body": body})
        data: dict[str, Any] = reply["plugindata"]["data"]
        if "error" in data:
            raise JanusError(f"{body['request']}: {data['error']}")
        return data

    async def message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """An asynchronous plugin request: the plugin's data and JSEP of its event."""
        message: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            message["jsep"] = jsep
        transaction = next(self._transactions)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._events[transaction] = future
        message["transaction"] = transaction
        try:
            async with self.http.post(f"{self.url}/{self.id}/{handle}", json=message) as response:
                ack: dict[str, Any] = await response.json(content_type=None)
            if ack.get("janus") == "error":
                raise JanusError(f"{body['request']}: {ack.get('error')}")
            if ack.get("janus") == "event":  # answered at once
                event = ack
            else:
                event = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        finally:
            self._events.pop(transaction, None)
        data: dict[str, Any] = event["plugindata"]["data"]
        if "error" in data:
            raise JanusError(f"{body['request']}: {data['error']}")
        return data, event.get("jsep")

    async def _poll(self) -> None:
        while True:
            try:
                async with self.http.get(f"{self.url}/{self.id}?maxev=100") as response:
                    events = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.2)  # Janus busy or gone: the requests time out on their own
                continue
            for event in events if isinstance(events, list) else [events]:
                if "sender" in event:
                    self._seen_event(int(event["sender"]), str(event.get("janus"))).set()
                future = self._events.get(str(event.get("transaction")))
                if future is not None and not future.done() and event.get("janus") == "event":
                    future.set_result(event)

    def _seen_event(self, handle: int, kind: str) -> asyncio.Event:
        return self._seen.setdefault((handle, kind), asyncio.Event())

    async def wait_event(self, handle: int, kind: str, timeout: float = REQUEST_TIMEOUT) -> None:
        """Until Janus reported ``kind`` on ``handle`` (e.g. "webrtcup": its PeerConnection
        is up), or ``TimeoutError``."""
        await asyncio.wait_for(self._seen_event(handle, kind).wait(), timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._post(f"/{self.id}", {"janus": "destroy"}), 10)
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.http.close()
