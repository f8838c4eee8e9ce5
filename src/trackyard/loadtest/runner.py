"""``trackyard load-test``: join testers at a rate, run for a while, report what arrived.

All testers live in this one asyncio process. Joining shows a progress bar, the run a live
table (per tester: tracks, packets, bitrate, loss, NACKs), the end a summary; ``--json``
prints the summary as JSON only. The run is bounded: joining at ``join_rate`` (each join
bounded by its own timeout), then ``duration`` seconds, then leaving (bounded). A first
Ctrl-C stops early and still leaves cleanly and reports; a second one gives up on leaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import math
import resource
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from trackyard.core.auth import VideoGrants, create_token
from trackyard.loadtest import media
from trackyard.loadtest.client import JoinError, PublishSpec, Tester

QUALITIES = {"low": 0, "medium": 1, "high": 2}  # models.VideoQuality
AUTH_STATUSES = (401, 403)
LEAVE_TIMEOUT = 10.0
TABLE_ROWS = 24  # subscribers shown in the live table (worst first); publishers always


@dataclass
class Options:
    url: str
    api_key: str
    api_secret: str
    room: str = ""
    rooms: int = 1
    video_publishers: int = 1
    audio_publishers: int = 0
    subscribers: int = 5
    duration: float = 30.0
    video_resolution: str = "medium"
    video_codec: str = "vp8"
    simulcast: bool = False
    decode_sample: bool = False  # the first subscriber decodes one video track
    subscriber_quality: str = "high"  # low | medium | high: the simulcast layer subscribers ask for
    join_rate: float = 10.0
    join_timeout: float = 20.0
    as_json: bool = False


@dataclass
class Run:
    opts: Options
    testers: list[Tester] = field(default_factory=list)
    joined: list[Tester] = field(default_factory=list)
    failed: list[tuple[Tester, str]] = field(default_factory=list)
    expected_tracks: dict[str, int] = field(default_factory=dict)  # room -> tracks published
    started: float = 0.0
    window_start: float = 0.0
    window_end: float = 0.0
    stopped_early: str = ""
    fatal: str = ""
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    rates: dict[str, tuple[float, int]] = field(default_factory=dict)  # name -> (t, bytes)
    bitrate: dict[str, float] = field(default_factory=dict)
    window_bytes_start: dict[str, int] = field(default_factory=dict)
    window_packets_start: dict[str, int] = field(default_factory=dict)
    window_unix: tuple[float, float] = (0.0, 0.0)
    layer_bytes: dict[str, tuple[int, int]] = field(default_factory=dict)  # tester/rid -> window


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def room_names(opts: Options) -> list[str]:
    base = opts.room or f"load-test-{dt.datetime.now():%H%M%S}"
    return [base] if opts.rooms == 1 else [f"{base}-{i}" for i in range(opts.rooms)]


def _token(opts: Options, identity: str, room: str, *, publish: bool) -> str:
    grants = VideoGrants(room_join=True, room=room, can_publish=publish, can_subscribe=not publish)
    return create_token(
        opts.api_key,
        opts.api_secret,
        identity=identity,
        name=identity,
        grants=grants,
        ttl=dt.timedelta(seconds=opts.duration + 3600),
    )


def make_testers(opts: Options, video: Any, audio: Any) -> tuple[list[Tester], dict[str, int]]:
    """Publishers of every room first (so subscribers find their tracks), then subscribers."""
    width, height, bitrate = media.RESOLUTIONS[opts.video_resolution]
    pubs: list[Tester] = []
    subs: list[Tester] = []
    expected: dict[str, int] = {}
    for r, room in enumerate(room_names(opts)):
        prefix = f"r{r}-" if opts.rooms > 1 else ""
        expected[room] = opts.video_publishers + opts.audio_publishers
        for i in range(opts.video_publishers):
            name = f"{prefix}video-pub-{i}"
            if opts.simulcast:  # video: the layers, lowest first, with their loops
                spec = PublishSpec(
                    "video", None, media.VIDEO_FPS, opts.video_codec, width, height, bitrate
                )
                spec.layers = video
            else:
                spec = PublishSpec(
                    "video", video, media.VIDEO_FPS, opts.video_codec, width, height, bitrate
                )
            pubs.append(
                Tester(name, opts.url, _token(opts, name, room, publish=True), room, publish=spec)
            )
        for i in range(opts.audio_publishers):
            name = f"{prefix}audio-pub-{i}"
            spec = PublishSpec("audio", audio, 1000 / media.AUDIO_FRAME_MS)
            pubs.append(
                Tester(name, opts.url, _token(opts, name, room, publish=True), room, publish=spec)
            )
        # ask for a layer only when it is not the default (the highest)
        quality = QUALITIES[opts.subscriber_quality]
        ask = quality if quality != QUALITIES["high"] else None
        for i in range(opts.subscribers):
            name = f"{prefix}sub-{i}"
            token = _token(opts, name, room, publish=False)
            decode = opts.decode_sample and not subs and opts.video_publishers > 0
            subs.append(
                Tester(name, opts.url, token, room, subscribe=True, quality=ask, decode=decode)
            )
    return pubs + subs, expected


def prepare_media(opts: Options) -> tuple[Any, Any]:
    """The pre-encoded loops (cached on disk after the first run)."""
    width, height, bitrate = media.RESOLUTIONS[opts.video_resolution]
    video: Any = None
    audio = None
    if opts.video_publishers and opts.simulcast:
        video = [
            (layer, media.cached(layer.spec.key, functools.partial(media.encode_video, layer.spec)))
            for layer in media.simulcast_layers(opts.video_codec, opts.video_resolution)
        ]
    elif opts.video_publishers:
        spec = media.VideoSpec(opts.video_codec, width, height, bitrate)
        video = media.cached(spec.key, lambda: media.encode_video(spec))
    if opts.audio_publishers:
        audio = media.cached("opus-32k", media.encode_audio)
    return video, audio


async def execute(opts: Options, console: Console) -> Run:
    run = Run(opts)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    interrupts = 0

    def interrupted() -> None:
        nonlocal interrupts
        interrupts += 1
        run.stopped_early = run.stopped_early or "interrupted (Ctrl-C)"
        stop.set()
        if interrupts > 1:
            raise KeyboardInterrupt

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, interrupted)
        loop.add_signal_handler(signal.SIGTERM, interrupted)
    try:
        video, audio = await loop.run_in_executor(None, prepare_media, opts)
        run.testers, run.expected_tracks = make_testers(opts, video, audio)
        run.started = time.monotonic()
        run.cpu_start = _cpu()
        await _join_all(run, console, stop)
        if run.joined and not run.fatal and not stop.is_set():  # nobody joined: no run
            run.window_start = time.monotonic()
            started_unix = time.time()
            run.window_bytes_start = {t.name: _bytes(t) for t in run.joined}
            run.window_packets_start = {t.name: t.received()[0] for t in run.joined}
            layers_start = _layer_bytes(run)
            await _measure(run, console, stop)
            run.window_unix = (started_unix, time.time())
            run.layer_bytes = {
                k: (layers_start.get(k, 0), end) for k, end in _layer_bytes(run).items()
            }
        run.window_end = time.monotonic()
        run.cpu_end = _cpu()
        await _sent_totals(run)
    finally:
        await _leave_all(run)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
    return run


def _bytes(t: Tester) -> int:
    return t.received()[1]


def _layer_bytes(run: Run) -> dict[str, int]:
    """Bytes sent so far per simulcast layer of each publisher (``tester/rid``)."""
    return {
        f"{t.name}/{s.layer.rid}": s.octets
        for t in run.joined
        if t.simulcast is not None
        for s in t.simulcast.layers
    }


async def _join_all(run: Run, console: Console, stop: asyncio.Event) -> None:
    opts = run.opts
    interval = 1.0 / opts.join_rate if opts.join_rate > 0 else 0.0
    progress = Progress(
        TextColumn("joining"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=console,
        disable=opts.as_json,
        transient=False,
    )
    pending: set[asyncio.Task[None]] = set()

    async def one(t: Tester, task_id: Any) -> None:
        try:
            await t.run_join(opts.join_timeout)
            run.joined.append(t)
        except JoinError as exc:
            run.failed.append((t, exc.reason))
            if exc.status in AUTH_STATUSES and not run.fatal:
                run.fatal = f"the server refused the access token: {exc.reason}"
                stop.set()
        except Exception as exc:
            run.failed.append((t, f"{type(exc).__name__}: {exc}"))
        progress.update(task_id, advance=1, failed=len(run.failed))

    with progress:
        task_id = progress.add_task("join", total=len(run.testers), failed=0)
        first = True
        for i, t in enumerate(run.testers):
            if stop.is_set():
                break
            # the first publisher of a room ahead of its subscribers: join it alone, so an
            # auth problem is one clear failure, not hundreds
            job = asyncio.create_task(one(t, task_id))
            pending.add(job)
            job.add_done_callback(pending.discard)
            if first:
                first = False
                await job
                continue
            due = run.started + (i + 1) * interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(due - time.monotonic(), 0))
        if pending:
            await asyncio.wait(pending, timeout=opts.join_timeout + 5)


async def _measure(run: Run, console: Console, stop: asyncio.Event) -> None:
    opts = run.opts
    end = run.window_start + opts.duration
    if opts.as_json:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), opts.duration)
        return
    with Live(await _table(run), console=console, refresh_per_second=2, transient=False) as live:
        while (left := end - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(1.0, left))
            if stop.is_set():
                break
            live.update(await _table(run))
        live.update(await _table(run))


async def _table(run: Run) -> Group:
    now = time.monotonic()
    table = Table(title="trackyard load-test", expand=False)
    for col in ("tester", "room", "tracks", "packets", "bitrate", "loss", "NACKs"):
        table.add_column(col, justify="left" if col in ("tester", "room") else "right")
    pubs = [t for t in run.joined if t.publish is not None]
    subs = [t for t in run.joined if t.publish is None]
    for t in pubs:
        packets, sent_bytes = await t.sent()
        rate = _rate(run, t.name, now, sent_bytes)
        if t.simulcast is None:
            tracks = "1 sent"
        else:
            tracks = f"{sum(s.active for s in t.simulcast.layers)}/{len(t.simulcast.layers)} layers"
        table.add_row(t.name, t.room, tracks, f"{packets}", _bps(rate), "-", f"{t.nacks} recv")
        for s in t.simulcast.layers if t.simulcast is not None else []:
            spec = s.layer.spec
            table.add_row(
                f"  {s.layer.rid} {spec.width}x{spec.height}",
                "",
                "sending" if s.active else "paused",
                f"{s.packets}",
                _bps(_rate(run, f"{t.name}/{s.layer.rid}", now, s.octets)),
                "-",
                f"{s.keyframe_requests} PLI",
            )
    rows = []
    for t in subs:
        packets, got_bytes, lost, rtx = t.received()
        rate = _rate(run, t.name, now, got_bytes)
        loss = lost / (packets + lost) if packets + lost else 0.0
        rows.append((loss, t, packets, rate, lost, rtx))
    rows.sort(key=lambda r: (-r[0], r[1].name))
    for loss, t, packets, rate, lost, rtx in rows[:TABLE_ROWS]:
        expected = run.expected_tracks.get(t.room, 0)
        tracks = f"{len(t.tracks_received())}/{expected}"
        if t.decode:  # the decoded sample's size tells the layer it gets
            tracks += f" {t.decoded_size[0]}x{t.decoded_size[1]}"
        table.add_row(
            t.name,
            t.room,
            tracks,
            f"{packets}",
            _bps(rate),
            f"{loss:.2%} ({lost})",
            f"{rtx} rtx",
        )
    if len(rows) > TABLE_ROWS:
        table.add_row(f"... {len(rows) - TABLE_ROWS} more subscribers", "", "", "", "", "", "")
    elapsed = now - run.window_start
    note = f"{elapsed:.0f}/{run.opts.duration:.0f} s, {len(run.joined)} joined"
    if run.failed:
        note += f", {len(run.failed)} failed"
    return Group(table, note)


def _rate(run: Run, name: str, now: float, total: int) -> float:
    before = run.rates.get(name)
    if before is not None and now - before[0] < 0.5:  # too short a window to say
        return run.bitrate.get(name, 0.0)
    run.rates[name] = (now, total)
    if before is None:
        return 0.0
    rate = (total - before[1]) * 8 / (now - before[0])
    run.bitrate[name] = rate
    return rate


def _bps(rate: float) -> str:
    if rate >= 1e6:
        return f"{rate / 1e6:.2f} Mbps"
    return f"{rate / 1e3:.0f} kbps"


async def _sent_totals(run: Run) -> None:
    for t in run.joined:
        if t.publish is not None:
            run.rates[f"sent:{t.name}"] = (0.0, (await t.sent())[0])


async def _leave_all(run: Run) -> None:
    if run.testers:
        await asyncio.wait(
            [asyncio.create_task(t.close()) for t in run.testers], timeout=LEAVE_TIMEOUT
        )


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000, 1)

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99)}


def summarize(run: Run) -> dict[str, Any]:
    opts = run.opts
    subs = [t for t in run.testers if t.publish is None]
    joined_subs = [t for t in run.joined if t.publish is None]
    expected = sum(run.expected_tracks.get(t.room, 0) for t in subs)
    received = sum(
        min(len(t.tracks_received()), run.expected_tracks.get(t.room, 0)) for t in joined_subs
    )
    packets = lost = rtx = total_bytes = 0
    for t in joined_subs:
        p, b, lo, rx = t.received()
        packets += p
        lost += lo
        rtx += rx
        total_bytes += b
    window = max(run.window_end - run.window_start, 1e-6) if run.window_start else 0.0
    window_bytes = sum(_bytes(t) - run.window_bytes_start.get(t.name, 0) for t in joined_subs)
    errors = Counter(reason for _, reason in run.failed)
    for t in run.joined:
        if t.error:
            errors[t.error] += 1
    missing = [
        {"tester": t.name, "room": t.room, "received": len(t.tracks_received())}
        for t in joined_subs
        if len(t.tracks_received()) < run.expected_tracks.get(t.room, 0)
    ]
    first_packet = [d for t in joined_subs if (d := t.first_packet_delay()) is not None]
    sample: dict[str, Any] | None = None
    for t in subs:
        if t.decode:
            width, height = t.decoded_size
            sample = {
                "tester": t.name,
                "track": t.decoded_track or None,
                "frames": t.decoded_frames,
                "width": width,
                "height": height,
            }
            if t in run.joined and not t.decoded_frames and not run.stopped_early:
                errors[f"{t.name} decoded no frame of its sample video track"] += 1
    cpu = run.cpu_end - run.cpu_start
    pubs = [t for t in run.joined if t.publish is not None]
    return {
        "url": opts.url,
        "rooms": room_names(opts) if opts.room else opts.rooms,
        "testers": {
            "video_publishers": opts.video_publishers * opts.rooms,
            "audio_publishers": opts.audio_publishers * opts.rooms,
            "subscribers": opts.subscribers * opts.rooms,
            "joined": len(run.joined),
            "failed": len(run.failed),
        },
        "video": {
            "codec": opts.video_codec,
            "resolution": opts.video_resolution,
            "simulcast": opts.simulcast,
            "subscriber_quality": opts.subscriber_quality,
            "layers": _layers_summary(run, window),
        },
        "duration_s": round(window, 2),
        "stopped_early": run.stopped_early or None,
        "tracks": {"expected": expected, "received": received, "missing": missing},
        "decoded_sample": sample,
        "join_latency_ms": _percentiles([t.join_latency for t in run.joined if t.join_latency]),
        "time_to_first_packet_ms": _percentiles(first_packet),
        "window_unix": {"start": run.window_unix[0], "end": run.window_unix[1]},
        "packets": {
            "received": packets,
            "received_in_window": sum(
                t.received()[0] - run.window_packets_start.get(t.name, 0) for t in joined_subs
            ),
            "lost": lost,
            "loss": round(lost / (packets + lost), 6) if packets + lost else 0.0,
            "retransmitted": rtx,
            "sent": sum(run.rates.get(f"sent:{t.name}", (0.0, 0))[1] for t in pubs),
            "nacks_to_publishers": sum(t.nacks for t in pubs),
            "plis_to_publishers": sum(t.plis for t in pubs),
        },
        "bitrate_bps": {
            "total_received": round(window_bytes * 8 / window) if window else 0,
            "per_subscriber_mean": round(window_bytes * 8 / window / len(joined_subs))
            if window and joined_subs
            else 0,
        },
        "bytes_received": total_bytes,
        "tester_cpu_s": round(cpu, 2),
        "tester_cpu_per_packet_us": round(cpu / packets * 1e6, 1) if packets else None,
        "errors": [{"reason": r, "count": n} for r, n in errors.most_common()],
        "fatal": run.fatal or None,
    }


def _layers_summary(run: Run, window: float) -> list[dict[str, Any]]:
    """Per simulcast layer, over all video publishers: what was sent, at what bitrate in the
    window, how many publishers were still sending it at the end (dynacast may pause it)."""
    pubs = [t.simulcast for t in run.joined if t.simulcast is not None]
    if not pubs:
        return []
    out: list[dict[str, Any]] = []
    for i, first in enumerate(pubs[0].layers):
        rid = first.layer.rid
        states = [p.layers[i] for p in pubs]
        names = [t.name for t in run.joined if t.simulcast is not None]
        window_bytes = sum(
            end - start for start, end in (run.layer_bytes.get(f"{n}/{rid}", (0, 0)) for n in names)
        )
        out.append(
            {
                "rid": rid,
                "width": first.layer.spec.width,
                "height": first.layer.spec.height,
                "target_bps": first.layer.spec.bitrate,
                "packets_sent": sum(s.packets for s in states),
                "bitrate_bps_per_publisher": round(window_bytes * 8 / window / len(pubs))
                if window
                else 0,
                "sending_at_end": sum(s.active for s in states),
                "keyframe_requests": sum(s.keyframe_requests for s in states),
            }
        )
    return out


def ok(summary: dict[str, Any]) -> bool:
    return (
        not summary["fatal"]
        and not summary["errors"]
        and summary["tracks"]["received"] == summary["tracks"]["expected"]
    )


def print_summary(summary: dict[str, Any], console: Console) -> None:
    t = summary["tracks"]
    p = summary["packets"]
    jl = summary["join_latency_ms"]
    fp = summary["time_to_first_packet_ms"]
    table = Table(title="summary", show_header=False)
    table.add_column("what")
    table.add_column("value")
    testers = summary["testers"]
    table.add_row("testers joined", f"{testers['joined']} ({testers['failed']} failed)")
    table.add_row("tracks received", f"{t['received']}/{t['expected']}")
    table.add_row("join latency", f"p50 {jl['p50']} ms, p95 {jl['p95']} ms, p99 {jl['p99']} ms")
    table.add_row(
        "time to first packet", f"p50 {fp['p50']} ms, p95 {fp['p95']} ms, p99 {fp['p99']} ms"
    )
    table.add_row("total bitrate", _bps(summary["bitrate_bps"]["total_received"]))
    table.add_row(
        "packets",
        f"{p['received']} received, {p['lost']} lost ({p['loss']:.3%}), "
        f"{p['retransmitted']} retransmitted; {p['nacks_to_publishers']} NACKed to publishers",
    )
    for layer in summary["video"]["layers"]:
        table.add_row(
            f"layer {layer['rid']} {layer['width']}x{layer['height']}",
            f"{_bps(layer['bitrate_bps_per_publisher'])} per publisher, "
            f"{layer['packets_sent']} packets sent, {layer['keyframe_requests']} keyframe "
            f"requests, sending at the end: {layer['sending_at_end']}",
        )
    sample = summary["decoded_sample"]
    if sample is not None:
        table.add_row(
            "decoded sample",
            f"{sample['tester']}: {sample['frames']} frames of {sample['track']}, "
            f"{sample['width']}x{sample['height']}",
        )
    table.add_row("measured for", f"{summary['duration_s']} s")
    table.add_row(
        "tester CPU",
        f"{summary['tester_cpu_s']} s ({summary['tester_cpu_per_packet_us']} us/packet)",
    )
    if summary["stopped_early"]:
        table.add_row("stopped early", summary["stopped_early"])
    for e in summary["errors"]:
        table.add_row("[red]error[/red]", f"{e['count']} x {e['reason']}")
    for m in t["missing"][:10]:
        table.add_row("[red]missing tracks[/red]", f"{m['tester']} got {m['received']}")
    console.print(table)
