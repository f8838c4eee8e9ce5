"""The official LiveKit browser SDK (livekit-client) in Debian's Chromium, for tests.

``tests/browser/driver.mjs`` (Node + playwright-core) launches ``/usr/bin/chromium`` once with
fake camera and microphone and serves ``tests/browser/page.html`` on ``http://localhost``; this
module talks to it over JSON lines: :meth:`Browser.open` makes a page (its own browser context),
:meth:`Page.call` runs one of the helpers of ``tests/browser/page.js`` (``window.T.<fn>``) in
it. Every call is bounded. Needs ``npm ci --prefix tests/browser`` and Debian's ``chromium``
(``scripts/bootstrap --test`` installs both).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc

from tests.support.media import FrameClock, clock
from tests.support.sdk import EventWaiter

BROWSER_DIR = Path(__file__).resolve().parents[1] / "browser"
DRIVER = BROWSER_DIR / "driver.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
TIMEOUT = 15.0  # one page call; generous: two cores are shared with the server and other tests
START_TIMEOUT = 60.0
MEDIA_MS = 20_000  # in-page bound for media to show up (ms): encoders warm up on shared cores
MEDIA_CALL = 30.0  # bound for one page call that waits on media or a connection (s)


class BrowserError(AssertionError):
    pass


def _prerequisites() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run scripts/bootstrap --test")
    for needed in ("livekit-client", "playwright-core"):
        if not (BROWSER_DIR / "node_modules" / needed).is_dir():
            pytest.fail(
                f"tests/browser/node_modules/{needed} is missing: run "
                "`npm ci --prefix tests/browser` (scripts/bootstrap --test does)"
            )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/bootstrap --test)")
    return node


class Browser:
    """One Chromium (through the driver process) with any number of pages."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.info: dict[str, Any] = {}
        self.log: list[dict[str, Any]] = []  # console errors/warnings, page errors, crashes
        self.stderr = bytearray()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        self._err_reader = asyncio.create_task(self._read_stderr())

    @classmethod
    async def launch(cls) -> Browser:
        node = _prerequisites()
        proc = await asyncio.create_subprocess_exec(
            node,
            str(DRIVER),
            cwd=BROWSER_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "CHROMIUM": CHROMIUM},
            limit=16 * 1024 * 1024,
        )
        browser = cls(proc)
        try:
            browser.info = await asyncio.wait_for(asyncio.shield(browser._ready), START_TIMEOUT)
        except BaseException:
            await browser.close()
            raise
        return browser

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            async for raw in self.proc.stdout:
                line = raw.decode(errors="replace").strip()
                if not line.startswith("{"):
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "id" in msg:
                    fut = self._pending.pop(msg["id"], None)
                    if fut is not None and not fut.done():
                        if msg.get("ok"):
                            fut.set_result(msg.get("result"))
                        else:
                            fut.set_exception(BrowserError(msg.get("error", "failed")))
                elif msg.get("event") == "ready":
                    if not self._ready.done():
                        self._ready.set_result(msg)
                else:
                    self.log.append(msg)
                    del self.log[:-200]
        finally:
            gone = BrowserError(f"the browser driver ended: {self.report()}")
            if not self._ready.done():
                self._ready.set_exception(gone)
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(gone)
            self._pending.clear()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr += chunk
            del self.stderr[:-20000]

    def report(self) -> str:
        log = "\n".join(json.dumps(m) for m in self.log[-40:])
        return (
            f"\nbrowser log:\n{log}\ndriver stderr:\n{self.stderr.decode(errors='replace')[-3000:]}"
        )

    async def _command(self, timeout: float, **cmd: Any) -> Any:
        if self._reader.done():
            raise BrowserError(f"the browser driver is gone: {self.report()}")
        cmd_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[cmd_id] = fut
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"id": cmd_id, **cmd}) + "\n").encode())
        await self.proc.stdin.drain()
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise BrowserError(f"no answer to {cmd} in {timeout}s {self.report()}") from None
        finally:
            self._pending.pop(cmd_id, None)

    async def open(self, name: str) -> Page:
        await self._command(START_TIMEOUT, op="open", page=name)
        return Page(self, name)

    async def goto(self, name: str, url: str) -> Page:
        """A page (its own context) at any ``url``: drive it with text/click/wait_text."""
        await self._command(START_TIMEOUT, op="goto", page=name, url=url)
        return Page(self, name)

    @contextlib.asynccontextmanager
    async def pages(self, *names: str) -> AsyncIterator[list[Page]]:
        """Pages that are closed (and so leave their rooms) at the end of the block."""
        opened: list[Page] = []
        try:
            for name in names:
                opened.append(await self.open(name))
            yield opened
        finally:
            for page in opened:
                with contextlib.suppress(Exception):
                    await page.close()

    async def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        for task in (self._reader, self._err_reader):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)


class Page:
    """One browser page running ``tests/browser/page.js``."""

    def __init__(self, browser: Browser, name: str) -> None:
        self.browser = browser
        self.name = name

    async def call(self, fn: str, *args: Any, timeout: float = TIMEOUT) -> Any:
        """``window.T.<fn>(*args)`` in the page; its result, or BrowserError with the log."""
        try:
            return await self.browser._command(timeout, op="call", page=self.name, fn=fn, args=args)
        except BrowserError as exc:
            raise BrowserError(f"{self.name}: T.{fn}{args!r}: {exc}") from None

    async def join(
        self, url: str, identity: str, room: str, options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """``new Room(options).connect(url, token)`` as ``identity``: its sid, identity, room."""
        from tests.support.sdk import token

        joined: dict[str, Any] = await self.call(
            "connect", url, token(identity, room), options or {}, timeout=MEDIA_CALL
        )
        assert joined["identity"] == identity, joined
        assert joined["sid"].startswith("PA_"), joined
        return joined

    async def decodes(
        self, identity: str, source: str = "camera", frames: int = 30
    ) -> dict[str, Any]:
        """Wait until this page decoded ``frames`` more frames of ``identity``'s ``source``."""
        grown: dict[str, Any] = await self.call(
            "waitGrowth", identity, source, "framesDecoded", frames, MEDIA_MS, timeout=MEDIA_CALL
        )
        return grown

    async def cameras_both_ways(
        self, at_peer: EventWaiter, peer_identity: str, identity: str
    ) -> tuple[str, rtc.Track]:
        """Publish this page's camera and microphone (as ``identity``) while the SDK peer
        publishes its camera; wait until each receives the other's and start the page's frame
        clock on the peer's. ``at_peer``: the peer's ``track_subscribed`` waiter, made before
        the peer published. The page's camera sid and the track the peer receives."""
        published = await self.call("enableCameraAndMicrophone", timeout=MEDIA_CALL)
        camera_sid: str = published["camera"]["sid"]
        await self.wait_event(
            "track_subscribed", {"identity": peer_identity, "source": "camera"}, timeout=MEDIA_CALL
        )
        track, _pub, _p = await at_peer.wait(
            lambda t, pub, p: p.identity == identity and pub.sid == camera_sid, timeout=30
        )
        await self.call("startFrameClock", peer_identity, "camera")
        return camera_sid, track

    async def hears(self, identity: str, source: str = "microphone") -> dict[str, Any]:
        """Wait until the decoded audio of ``identity``'s ``source`` carries energy."""
        grown: dict[str, Any] = await self.call(
            "waitGrowth", identity, source, "totalAudioEnergy", 1e-4, MEDIA_MS, timeout=MEDIA_CALL
        )
        return grown

    async def wait_event(
        self,
        type_: str,
        match: dict[str, Any] | None = None,
        *,
        timeout: float = TIMEOUT,
        since: int = 0,
    ) -> dict[str, Any]:
        """The first page event of ``type_`` with the fields of ``match`` (seq >= ``since``)."""
        ms = int(timeout * 1000)
        result: dict[str, Any] = await self.call(
            "waitEvent", type_, match or {}, ms, since, timeout=timeout + 5
        )
        return result

    async def mark(self) -> int:
        """The position after the page's last event, for ``wait_event(since=...)``."""
        return int(await self.call("mark"))

    async def text(self, selector: str) -> str:
        """The ``innerText`` of the first element matching ``selector``."""
        found = await self.browser._command(TIMEOUT, op="text", page=self.name, selector=selector)
        return str(found)

    async def click(self, selector: str) -> None:
        await self.browser._command(TIMEOUT, op="click", page=self.name, selector=selector)

    async def fill(self, selector: str, value: str) -> None:
        await self.browser._command(
            TIMEOUT, op="fill", page=self.name, selector=selector, value=value
        )

    async def url(self) -> str:
        return str(await self.browser._command(TIMEOUT, op="url", page=self.name))

    async def wait_text(self, selector: str, text: str, timeout: float = TIMEOUT) -> str:
        """Wait until the ``innerText`` of ``selector`` contains ``text``; that text."""
        ms = int(timeout * 1000)
        found = await self.browser._command(
            timeout + 5, op="wait_text", page=self.name, selector=selector, text=text, ms=ms
        )
        return str(found)

    async def screenshot(self, path: Path) -> None:
        await self.browser._command(TIMEOUT, op="screenshot", page=self.name, path=str(path))

    async def close(self) -> None:
        await self.browser._command(TIMEOUT, op="close", page=self.name)


def browser_fixture() -> Any:
    """A module-scoped pytest fixture ``browser``: one Chromium for the whole module."""

    @pytest.fixture(scope="module", name="browser")
    async def _browser() -> AsyncIterator[Browser]:
        b = await Browser.launch()
        try:
            yield b
        finally:
            await b.close()
            if os.environ.get("TRACKYARD_BROWSER_LOG"):
                print(b.report())

    return _browser


AnyFrameClock = FrameClock  # of every frame, on time.time(): see any_frame_clock


def any_frame_clock(track: rtc.Track) -> contextlib.AbstractAsyncContextManager[FrameClock]:
    """Arrival times (``time.time()``, comparable with the page's ``Date.now()``) of every
    frame the Python SDK decodes from one track: a browser's fake camera carries no frame
    numbers."""
    return clock(track, numbered=False, now=time.time)
