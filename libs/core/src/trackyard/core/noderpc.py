"""Request/response calls to an SFU node over the bus (the node's internal room API).

The caller publishes an ``RPC`` envelope on the node's channel with ``reply_to`` set to its own
reply channel; the node answers with ``RPC_REPLY`` carrying the same ``session`` (request id).
A refusal travels as its code plus reason, so the public API passes it on unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import structlog

from trackyard.core import ids, keys, messages
from trackyard.core.bus import Bus, BusClosedError, Envelope, Subscription
from trackyard.core.refusal import Code, Refusal

log = structlog.get_logger(__name__)


class ChannelRpcClient:
    """Request/response on any bus channel; one reply channel per client, shared by its calls.

    ``caller_id`` names the reply channel (suffixed with ``purpose`` when one process keeps
    several clients)."""

    def __init__(self, bus: Bus, caller_id: str | None = None, purpose: str = "") -> None:
        self._bus = bus
        caller = caller_id or ids.new_id("RC_")
        self._reply_channel = keys.reply_channel(f"{caller}:{purpose}" if purpose else caller)
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._sub: Subscription | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._sub is None:
            self._sub = self._bus.subscribe(self._reply_channel)
            self._reader = asyncio.create_task(self._read_replies(self._sub))

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(Exception):
            await self._bus.delete(self._reply_channel)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(Refusal(Code.UNAVAILABLE, "caller closed"))

    async def call_channel(
        self,
        channel: str,
        method: str,
        request: bytes,
        *,
        timeout: float = messages.RPC_TIMEOUT_SECONDS,
        headers: Mapping[str, str] | None = None,
        callee: str = "",
    ) -> bytes:
        """Publish the request on ``channel`` and wait for its reply (``callee``: named in
        the timeout error)."""
        await self.start()
        request_id = ids.new_id(ids.REQUEST)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        try:
            await self._bus.publish(
                channel,
                Envelope(
                    kind=messages.RPC,
                    session=request_id,
                    data=request,
                    reply_to=self._reply_channel,
                    headers={"method": method, **(headers or {})},
                ),
            )
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            who = f"{callee} did not answer" if callee else "no answer to"
            raise Refusal(Code.UNAVAILABLE, f"{who} {method} within {timeout:g}s") from None
        finally:
            self._pending.pop(request_id, None)

    async def _read_replies(self, sub: Subscription) -> None:
        try:
            async for env in sub:
                fut = self._pending.get(env.session)
                if fut is None or fut.done():
                    continue  # a reply after its caller gave up
                code = env.headers.get("error")
                if code:
                    fut.set_exception(Refusal(Code.parse(code), env.data.decode(errors="replace")))
                else:
                    fut.set_result(env.data)
        except BusClosedError:
            return


class NodeRpcClient(ChannelRpcClient):
    """Calls to SFU nodes' room API (each node's own channel)."""

    async def call(
        self,
        node_id: str,
        method: str,
        request: bytes,
        timeout: float = messages.RPC_TIMEOUT_SECONDS,
    ) -> bytes:
        return await self.call_channel(
            keys.node_channel(node_id), method, request, timeout=timeout, callee=f"node {node_id}"
        )


async def reply(
    bus: Bus, request: Envelope, data: bytes = b"", error: Refusal | None = None
) -> None:
    """Answer one ``RPC`` envelope."""
    if not request.reply_to:
        return
    headers = {"error": error.code.value} if error else {}
    body = error.reason.encode() if error else data
    await bus.publish(
        request.reply_to,
        Envelope(kind=messages.RPC_REPLY, session=request.session, data=body, headers=headers),
    )
