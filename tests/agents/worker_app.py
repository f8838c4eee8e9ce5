"""A minimal LiveKit Agents worker (no AI plugins), run with .venv-agents' Python:

    .venv-agents/bin/python tests/agents/worker_app.py --url ws://... [--agent-name N]
        [--type room|publisher|participant] [--tone 440] [--load 0.0] [--decline]

Its entrypoint joins the room, publishes a sine tone (frequency from the job's metadata
``{"tone": F}`` or ``--tone``) and answers the RPC method ``whoami`` with
``<identity>|<job id>|<job type>``. ``--load`` is the load it reports (over 0.5 it reports
itself FULL); ``--decline`` makes it refuse every job offer (without terminating the job, so the
server offers it to another worker). It prints one JSON line per
event (``registered``, ``offer``, ``job``, ``published``, ``ended``) on stdout for the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time

import numpy as np
from livekit import rtc
from livekit.agents import AgentServer, JobContext, JobExecutorType, JobRequest
from livekit.agents.worker import ServerType

TYPES = {
    "room": ServerType.ROOM,
    "publisher": ServerType.PUBLISHER,
}


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


async def entrypoint(ctx: JobContext) -> None:
    meta = json.loads(ctx.job.metadata) if ctx.job.metadata.startswith("{") else {}
    freq = float(meta.get("tone", os.environ.get("AGENT_TONE", "440")))

    async def ended(reason: str = "") -> None:
        emit("ended", job=ctx.job.id, room=ctx.job.room.name, reason=reason)

    ctx.add_shutdown_callback(ended)
    await ctx.connect()
    room = ctx.room
    identity = room.local_participant.identity
    job_type = ctx.job.type

    async def whoami(_data: rtc.RpcInvocationData) -> str:
        return f"{identity}|{ctx.job.id}|{job_type}"

    room.local_participant.register_rpc_method("whoami", whoami)
    source = rtc.AudioSource(48000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("agent-tone", source)
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await room.local_participant.publish_track(track, opts)
    emit("published", job=ctx.job.id, identity=identity, room=room.name, tone=freq)
    pos = 0
    frame = rtc.AudioFrame.create(48000, 1, 480)
    samples = np.frombuffer(frame.data, dtype=np.int16)
    while room.isconnected():
        t = (np.arange(480) + pos) / 48000
        samples[:] = (np.sin(2 * math.pi * freq * t) * 12000).astype(np.int16)
        await source.capture_frame(frame)  # paces itself (10 ms frames)
        pos += 480


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", default="devkey")
    ap.add_argument("--api-secret", default="secret")
    ap.add_argument("--agent-name", default="")
    ap.add_argument("--type", default="room", choices=sorted(TYPES))
    ap.add_argument("--tone", type=float, default=440.0)
    ap.add_argument("--load", type=float, default=0.0)
    ap.add_argument("--decline", action="store_true")
    args = ap.parse_args()
    os.environ["AGENT_TONE"] = str(args.tone)  # read by the job processes

    server = AgentServer(
        ws_url=args.url,
        api_key=args.api_key,
        api_secret=args.api_secret,
        job_executor_type=JobExecutorType.PROCESS,  # the framework's default on Linux
        num_idle_processes=1,
        load_threshold=0.5,
        load_fnc=lambda: float(args.load),
        port=0,
        max_retry=30,
    )

    async def on_request(req: JobRequest) -> None:
        emit("offer", job=req.job.id, room=req.room.name, decline=args.decline)
        if args.decline:
            await req.reject(terminate=False)  # "not me": the server tries another worker
        else:
            await req.accept()
            emit("job", job=req.job.id, room=req.room.name, type=int(req.job.type))

    server.rtc_session(
        entrypoint, agent_name=args.agent_name, type=TYPES[args.type], on_request=on_request
    )

    def _registered(worker_id: str, _info: object) -> None:
        emit("registered", worker_id=worker_id)

    server.on("worker_registered", _registered)

    try:
        asyncio.run(server.run(devmode=False))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
