"""Media bookkeeping for fault tests: who decodes whose frames, and when.

A :class:`FrameLog` follows one SDK client: for every video track it subscribes to (again
after each reconnect, when the SDK raises new tracks) it decodes frames and records the time
of each readable pattern frame per publisher. Tests then ask when media from a publisher came
back after a moment, or the longest gap between two readable frames in a period.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from livekit import rtc

from tests.support.media import pattern_video, read_pattern
from tests.support.sdk import connected

SMALL = {"width": 320, "height": 180, "fps": 15}  # cheap to encode and decode on 2 cores


@dataclass
class FrameLog:
    room: rtc.Room
    frames: dict[str, list[float]] = field(default_factory=dict)  # publisher -> monotonic times
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _cond: asyncio.Condition = field(default_factory=asyncio.Condition)

    def __post_init__(self) -> None:
        self.room.on("track_subscribed", self._on_track)
        for participant in self.room.remote_participants.values():
            for pub in participant.track_publications.values():
                if pub.track is not None and pub.kind == rtc.TrackKind.KIND_VIDEO:
                    self._start(pub.track, participant.identity)

    def _on_track(
        self, track: rtc.Track, _pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            self._start(track, who.identity)

    def _start(self, track: rtc.Track, identity: str) -> None:
        task = asyncio.get_running_loop().create_task(self._read(track, identity))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, track: rtc.Track, identity: str) -> None:
        stream = rtc.VideoStream(track)
        try:
            async for event in stream:
                if read_pattern(event.frame) is not None:
                    self.frames.setdefault(identity, []).append(time.monotonic())
                    async with self._cond:
                        self._cond.notify_all()
        finally:
            await stream.aclose()

    async def back_after(self, identity: str, since: float, *, count: int, timeout: float) -> float:
        """Time of the ``count``-th readable frame from ``identity`` after ``since``."""

        async def wait() -> float:
            async with self._cond:
                while True:
                    after = [t for t in self.frames.get(identity, []) if t > since]
                    if len(after) >= count:
                        return after[count - 1]
                    await self._cond.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            got = len([t for t in self.frames.get(identity, []) if t > since])
            raise AssertionError(
                f"{self.room.local_participant.identity} got {got} frames from {identity} "
                f"in the {timeout}s after the fault; it sees {self.describe()}"
            ) from None

    def describe(self) -> str:
        """What the SDK says it subscribed to, for failure reports."""
        return repr(
            {
                p.identity: [
                    (pub.sid, pub.kind, pub.subscribed, pub.track is not None)
                    for pub in p.track_publications.values()
                ]
                for p in self.room.remote_participants.values()
            }
        )

    def max_gap(self, identity: str, start: float, end: float) -> float:
        """Longest stretch without a readable frame from ``identity`` within [start, end]."""
        times = [start, *[t for t in self.frames.get(identity, []) if start < t < end], end]
        return max(b - a for a, b in itertools.pairwise(times))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@dataclass
class Peer:
    room: rtc.Room
    log: FrameLog

    @property
    def identity(self) -> str:
        return self.room.local_participant.identity


@contextlib.asynccontextmanager
async def video_peer(url: str, identity: str, room: str) -> AsyncIterator[Peer]:
    """An SDK client that publishes a small pattern video and logs the frames it decodes."""
    async with connected(url, identity, room) as client:
        log = FrameLog(client)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False)
        try:
            async with pattern_video(client, options=opts, **SMALL):
                yield Peer(client, log)
        finally:
            await log.close()


async def all_see_media(peers: list[Peer], since: float, *, count: int, timeout: float) -> float:
    """Every peer decodes ``count`` frames from every other after ``since``; returns the
    latest time media came back for a pair."""
    waits = [
        p.log.back_after(q.identity, since, count=count, timeout=timeout)
        for p in peers
        for q in peers
        if p is not q
    ]
    return max(await asyncio.gather(*waits))


_BAD_LOG = re.compile(
    r"background task failed|signal request failed|Traceback|Task exception was never retrieved"
    r"|InvalidStateError"
)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def bad_log_lines(text: str) -> list[str]:
    """Lines reporting an error that no fault should cause in a Trackyard process, each
    with the 25 lines that follow it (the traceback)."""
    lines = _ANSI.sub("", text).splitlines()
    return [
        "\n".join(line[:300] for line in lines[i : i + 25])
        for i, line in enumerate(lines)
        if _BAD_LOG.search(line)
    ][:3]
