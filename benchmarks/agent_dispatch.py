"""Agent dispatch latency: room start -> the agent's first audio at a participant.

One real ``livekit-agents`` worker (tests/agents/worker_app.py, in .venv-agents, job
processes as the framework runs them) is registered with ``trackyard dev``. Each repeat, a
participant joins a fresh room (that join starts the room, which dispatches the unnamed agent
automatically) and we time, from just before ``connect()``:
the worker receiving the job offer, the agent publishing its track, and the participant
decoding the first audible frame of the agent's tone (the first audio packet, plus one
opus decode). Run inside the test network namespace:
``scripts/netns .venv/bin/python -m benchmarks.agent_dispatch [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from livekit import api, rtc

from benchmarks.stats import percentiles
from tests.agents.support import AgentWorker
from tests.support.sdk import EventWaiter, token
from tests.support.trackyard import API_KEY, API_SECRET, TrackyardProcess

RESULTS = Path(__file__).parent / "results"


async def _first_audible(track: rtc.Track) -> float:
    stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
    try:
        async for event in stream:
            if np.abs(np.frombuffer(event.frame.data, dtype=np.int16)).max() >= 500:
                return time.time()
    finally:
        await stream.aclose()
    raise RuntimeError("stream ended")


async def one(server: TrackyardProcess, worker: AgentWorker, i: int) -> dict[str, float]:
    room = f"bench-agent-{i}-{time.monotonic_ns()}"
    client = rtc.Room()
    subs = EventWaiter(client, "track_subscribed")
    t0 = time.time()
    await asyncio.wait_for(client.connect(server.ws_url, token(f"u{i}", room)), 30)
    try:
        (track, _, _) = await subs.wait(
            lambda t, p, w: w.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT, 60
        )
        heard = await asyncio.wait_for(_first_audible(track), 30)
        offer = await worker.wait("offer", timeout=5, room=room)
        published = await worker.wait("published", timeout=5, room=room)
    finally:
        await asyncio.wait_for(client.disconnect(), 10)
    async with api.LiveKitAPI(server.http_url, API_KEY, API_SECRET) as lk:
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))
    return {
        "offer_ms": (offer["t"] - t0) * 1000,
        "published_ms": (published["t"] - t0) * 1000,
        "first_audio_ms": (heard - t0) * 1000,
    }


async def main(repeats: int) -> dict[str, Any]:
    cfg = {"logging": {"json": True, "level": "info"}, "room": {"departure_timeout": 1}}
    with TrackyardProcess(cfg) as server:
        async with AgentWorker(server.ws_url) as worker:
            await one(server, worker, -1)  # warm-up: first job process start, imports
            samples = [await one(server, worker, i) for i in range(repeats)]
    summary = {k: percentiles([s[k] for s in samples], (50, 95)) for k in samples[0]}
    for key, stats in summary.items():
        print(f"room start -> {key[:-3]:<13} ms {stats}", flush=True)
    return {"benchmark": "agent_dispatch", "repeats": repeats, "summary": summary}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    result = asyncio.run(main(args.repeats))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "agent_dispatch.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
