"""Known media for end-to-end checks: video frames that carry their number, audio tones."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable

import numpy as np
from livekit import rtc

BITS = 12  # frame number bits drawn as blocks along the top of the frame


def pattern_frame(number: int, width: int, height: int) -> rtc.VideoFrame:
    """A grey frame whose top band shows ``number`` in binary as black/white blocks."""
    img = np.full((height, width, 4), 128, dtype=np.uint8)
    img[..., 3] = 255
    block = width // BITS
    band = max(16, height // 4)
    for bit in range(BITS):
        value = 255 if (number >> bit) & 1 else 0
        img[:band, bit * block : (bit + 1) * block, :3] = value
    return rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, img.tobytes())


def read_pattern(frame: rtc.VideoFrame) -> int | None:
    """The number drawn by :func:`pattern_frame`, or None when the band is not readable."""
    rgba = frame.convert(rtc.VideoBufferType.RGBA)
    img = np.frombuffer(rgba.data, dtype=np.uint8).reshape(rgba.height, rgba.width, 4)
    block = rgba.width // BITS
    band = max(16, rgba.height // 4)
    number = 0
    for bit in range(BITS):
        # the centre of each block, away from edges the encoder blurs
        cell = img[
            band // 4 : 3 * band // 4, bit * block + block // 4 : (bit + 1) * block - block // 4, :3
        ]
        mean = float(cell.mean())
        if 60 < mean < 196:
            return None
        if mean >= 196:
            number |= 1 << bit
    return number


def tone_frame(
    freq: float,
    start_sample: int,
    sample_rate: int = 48000,
    samples: int = 480,
    amplitude: int = 12000,
) -> rtc.AudioFrame:
    frame = rtc.AudioFrame.create(sample_rate, 1, samples)
    t = (np.arange(samples) + start_sample) / sample_rate
    np.frombuffer(frame.data, dtype=np.int16)[:] = (
        np.sin(2 * np.pi * freq * t) * amplitude
    ).astype(np.int16)
    return frame


def dominant_frequency(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / sample_rate)[int(np.argmax(spectrum))])


@contextlib.asynccontextmanager
async def pattern_video(
    room: rtc.Room,
    width: int = 640,
    height: int = 360,
    fps: int = 30,
    options: rtc.TrackPublishOptions | None = None,
    name: str = "pattern",
) -> AsyncIterator[rtc.LocalTrackPublication]:
    """Publish a pattern video track and feed it frames until the context ends."""
    source = rtc.VideoSource(width, height)
    track = rtc.LocalVideoTrack.create_video_track(name, source)
    opts = options or rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)
    stop = asyncio.Event()

    async def feed() -> None:
        n = 0
        while not stop.is_set():
            source.capture_frame(pattern_frame(n, width, height))
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / fps)

    feeder = asyncio.create_task(feed())
    try:
        pub = await asyncio.wait_for(room.local_participant.publish_track(track, opts), 15)
        yield pub
    finally:
        stop.set()
        await feeder


@contextlib.asynccontextmanager
async def tone_audio(
    room: rtc.Room, freq: float = 440.0, name: str = "tone", amplitude: int = 12000
) -> AsyncIterator[rtc.LocalTrackPublication]:
    """Publish a sine tone (``amplitude`` 0: digital silence) until the context ends."""
    source = rtc.AudioSource(48000, 1)
    track = rtc.LocalAudioTrack.create_audio_track(name, source)
    stop = asyncio.Event()

    async def feed() -> None:
        pos = 0
        while not stop.is_set():
            await source.capture_frame(
                tone_frame(freq, pos, amplitude=amplitude)
            )  # paces itself (10 ms frames)
            pos += 480

    feeder = asyncio.create_task(feed())
    try:
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        pub = await asyncio.wait_for(room.local_participant.publish_track(track, opts), 15)
        yield pub
    finally:
        stop.set()
        await feeder


async def read_numbers(track: rtc.Track, count: int, timeout: float = 15) -> list[int]:
    """Decode frames of a subscribed video track until ``count`` readable numbers arrived."""
    stream = rtc.VideoStream(track)
    numbers: list[int] = []

    async def read() -> None:
        async for event in stream:
            n = read_pattern(event.frame)
            if n is not None:
                numbers.append(n)
                if len(numbers) >= count:
                    return

    try:
        await asyncio.wait_for(read(), timeout)
    finally:
        await stream.aclose()
    return numbers


async def first_frame_size(track: rtc.Track, timeout: float = 10) -> tuple[int, int]:
    stream = rtc.VideoStream(track)
    try:
        event = await asyncio.wait_for(anext(aiter(stream)), timeout)
        return event.frame.width, event.frame.height
    finally:
        await stream.aclose()


async def dominant_tone(track: rtc.Track, seconds: float = 0.5, timeout: float = 15) -> float:
    stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
    chunks: list[np.ndarray] = []
    need = int(48000 * seconds)

    async def read() -> None:
        got = 0
        async for event in stream:
            data = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
            if np.abs(data).max() < 500:  # silence before the tone starts flowing
                continue
            chunks.append(data)
            got += len(data)
            if got >= need:
                return

    try:
        await asyncio.wait_for(read(), timeout)
    finally:
        await stream.aclose()
    return dominant_frequency(np.concatenate(chunks), 48000)


async def until_width(track: rtc.Track, pred: Callable[[int], bool], timeout: float) -> int:
    """Read decoded frames until one's width satisfies ``pred``; returns that width."""
    stream = rtc.VideoStream(track)

    async def read() -> int:
        async for event in stream:
            if pred(event.frame.width):
                return int(event.frame.width)
        raise AssertionError("stream ended")

    try:
        return await asyncio.wait_for(read(), timeout)
    finally:
        await stream.aclose()


class FrameClock:
    """Arrival times of decoded frames of one track: of pattern frames (``numbered``, the
    default), or of every frame (a browser's fake camera carries no frame numbers). ``now``:
    the clock (``time.time`` compares with a page's ``Date.now()``)."""

    def __init__(
        self,
        track: rtc.Track,
        *,
        numbered: bool = True,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.times: list[float] = []
        self._numbered = numbered
        self._now = now
        self._arrived = asyncio.Condition()
        self._stream = rtc.VideoStream(track)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self._stream:
            if not self._numbered or read_pattern(event.frame) is not None:
                self.times.append(self._now())
                async with self._arrived:
                    self._arrived.notify_all()

    async def frames_after(self, t: float, count: int, timeout: float = 15) -> None:
        async def wait() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: sum(1 for x in self.times if x > t) >= count)

        await asyncio.wait_for(wait(), timeout)

    def max_gap(self, since: float, until: float | None = None) -> float:
        """The longest time between decoded frames after ``since``; with ``until``, counting
        from ``since`` to the first frame and from the last frame to ``until`` too."""
        times = [x for x in self.times if x >= since and (until is None or x <= until)]
        if until is not None:
            times = [since, *times, until]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._stream.aclose()


@contextlib.asynccontextmanager
async def clock(
    track: rtc.Track, *, numbered: bool = True, now: Callable[[], float] = time.monotonic
) -> AsyncIterator[FrameClock]:
    c = FrameClock(track, numbered=numbered, now=now)
    try:
        yield c
    finally:
        await c.close()


async def frame_lumas(track: rtc.Track, count: int, timeout: float = 20) -> list[float]:
    """Mean luma of ``count`` decoded frames of ``track`` (a camera picture, not black)."""
    stream = rtc.VideoStream(track)
    lumas: list[float] = []

    async def read() -> None:
        async for event in stream:
            rgba = event.frame.convert(rtc.VideoBufferType.RGBA)
            img = np.frombuffer(rgba.data, dtype=np.uint8).reshape(rgba.height, rgba.width, 4)
            lumas.append(float(img[..., :3].mean()))
            if len(lumas) >= count:
                return

    try:
        await asyncio.wait_for(read(), timeout)
    finally:
        await stream.aclose()
    return lumas
