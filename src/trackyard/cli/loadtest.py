"""``trackyard load-test``: the command line of :mod:`trackyard.loadtest`."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated

import typer

RESOLUTIONS = ("low", "medium", "high")
CODECS = ("vp8", "h264")
QUALITIES = ("low", "medium", "high")


def load_test_command(
    url: Annotated[
        str, typer.Option(envvar="LIVEKIT_URL", help="the server, ws(s):// or http(s)://")
    ] = "",
    api_key: Annotated[str, typer.Option(envvar="LIVEKIT_API_KEY")] = "",
    api_secret: Annotated[str, typer.Option(envvar="LIVEKIT_API_SECRET")] = "",
    room: Annotated[str, typer.Option(help="room name (default: load-test-HHMMSS)")] = "",
    rooms: Annotated[int, typer.Option(min=1, max=100, help="rooms, each with the testers")] = 1,
    video_publishers: Annotated[int, typer.Option(min=0, max=100, help="per room")] = 1,
    audio_publishers: Annotated[int, typer.Option(min=0, max=100, help="per room")] = 0,
    subscribers: Annotated[int, typer.Option(min=0, max=2000, help="per room")] = 5,
    duration: Annotated[
        float, typer.Option(min=1, max=24 * 3600, help="seconds to run once everyone joined")
    ] = 30.0,
    video_resolution: Annotated[
        str, typer.Option(help="low (320x180), medium (640x360) or high (1280x720)")
    ] = "medium",
    video_codec: Annotated[str, typer.Option(help="vp8 or h264")] = "vp8",
    simulcast: Annotated[
        bool,
        typer.Option(
            help="publish video as 3 simulcast layers (rids q/h/f: 1/4, 1/2, full resolution)"
        ),
    ] = False,
    subscriber_quality: Annotated[
        str, typer.Option(help="the simulcast layer subscribers ask for: low, medium or high")
    ] = "high",
    decode_sample: Annotated[
        bool,
        typer.Option(
            help="the first subscriber also decodes one video track (PyAV) to prove the content"
        ),
    ] = False,
    join_rate: Annotated[float, typer.Option(min=0.1, max=1000, help="joins per second")] = 10.0,
    join_timeout: Annotated[float, typer.Option(min=1, max=120, help="seconds per join")] = 20.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON only")] = False,
) -> None:
    """Load-test any LiveKit-compatible server: publishers replay pre-encoded media,
    subscribers count packets, bitrate and loss per track (no decoding)."""
    problems = []
    if not url:
        problems.append("--url (or LIVEKIT_URL) is required")
    if not api_key or not api_secret:
        problems.append("--api-key and --api-secret (or LIVEKIT_API_KEY/_SECRET) are required")
    if video_resolution not in RESOLUTIONS:
        problems.append(f"--video-resolution must be one of {', '.join(RESOLUTIONS)}")
    if video_codec.lower() not in CODECS:
        problems.append(f"--video-codec must be one of {', '.join(CODECS)}")
    if subscriber_quality.lower() not in QUALITIES:
        problems.append(f"--subscriber-quality must be one of {', '.join(QUALITIES)}")
    if video_publishers + audio_publishers == 0 and subscribers == 0:
        problems.append("nothing to do: no publishers and no subscribers")
    if problems:
        for p in problems:
            typer.echo(f"trackyard load-test: {p}", err=True)
        raise typer.Exit(2)

    from rich.console import Console

    from trackyard.loadtest import runner

    opts = runner.Options(
        url=url,
        api_key=api_key,
        api_secret=api_secret,
        room=room,
        rooms=rooms,
        video_publishers=video_publishers,
        audio_publishers=audio_publishers,
        subscribers=subscribers,
        duration=duration,
        video_resolution=video_resolution,
        video_codec=video_codec.lower(),
        simulcast=simulcast,
        subscriber_quality=subscriber_quality.lower(),
        decode_sample=decode_sample,
        join_rate=join_rate,
        join_timeout=join_timeout,
        as_json=as_json,
    )
    console = Console(stderr=True, quiet=as_json)
    try:
        run = asyncio.run(runner.execute(opts, console))
    except KeyboardInterrupt:
        typer.echo("trackyard load-test: interrupted twice, gave up leaving cleanly", err=True)
        raise typer.Exit(130) from None
    summary = runner.summarize(run)
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        out = Console()
        out.print()
        runner.print_summary(summary, out)
    if summary["fatal"]:
        typer.echo(f"trackyard load-test: {summary['fatal']}", err=True)
        raise typer.Exit(1)
    if run.stopped_early:
        raise typer.Exit(130)
    if not runner.ok(summary):
        raise typer.Exit(1)
