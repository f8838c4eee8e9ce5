"""What a room's clients are told about its participants, and when.

As LiveKit does, a change that matters to the others at once goes out at once: anything about a
publisher (its tracks come and go with it), and a change of name, metadata, attributes or
permission. The rest, the joins and leaves of participants that publish nothing, wait for the
next batch (``room.participant_update_interval``), one update per batch and client with the
latest info of each: N subscribers joining a room one after the other cost N x N messages
through the signal edges unbatched, and far fewer batched.

Updates are cut in messages of at most ``room.update_batch_target_size`` bytes (LiveKit's key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from livekit.protocol import models

Send = Callable[[list[models.ParticipantInfo]], None]


def _changed_for_others(old: models.ParticipantInfo, new: models.ParticipantInfo) -> bool:
    return (
        old.name != new.name
        or old.metadata != new.metadata
        or dict(old.attributes) != dict(new.attributes)
        or old.permission != new.permission
    )


def chunks(
    infos: Iterable[models.ParticipantInfo], target_size: int
) -> list[list[models.ParticipantInfo]]:
    """``infos`` in order, cut so that each chunk's infos take at most ``target_size`` bytes
    (an info larger than that is a chunk by itself); 0: one chunk."""
    out: list[list[models.ParticipantInfo]] = []
    current: list[models.ParticipantInfo] = []
    size = 0
    for info in infos:
        n = info.ByteSize()
        if current and target_size and size + n > target_size:
            out.append(current)
            current, size = [], 0
        current.append(info)
        size += n
    if current:
        out.append(current)
    return out


class ParticipantUpdates:
    """One room's participant updates to its clients (see the module docstring).

    ``send`` is given the infos of one update message; it reaches every client of the room."""

    def __init__(self, send: Send, *, interval: float, target_size: int) -> None:
        self._send = send
        self._interval = interval
        self._target_size = target_size
        self._pending: dict[str, models.ParticipantInfo] = {}  # identity -> latest, not sent
        self._known: dict[str, models.ParticipantInfo] = {}  # identity -> latest pushed
        self._timer: asyncio.TimerHandle | None = None

    def push(self, *infos: models.ParticipantInfo) -> bool:
        """``infos`` changed: each goes now, or with the next batch. True when all went now."""
        now: list[models.ParticipantInfo] = []
        batched = False
        for info in infos:
            batched = self._push(info, now) or batched
        if now:
            self._deliver(now)
        if batched and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)
        return not batched

    def _push(self, info: models.ParticipantInfo, now: list[models.ParticipantInfo]) -> bool:
        identity = info.identity
        known = self._known.get(identity)
        if known is not None and known.sid == info.sid and info.version < known.version:
            return False  # an older view of the same session: the clients have a newer one
        waiting = self._pending.get(identity)
        if waiting is not None and waiting.sid != info.sid:
            # another session of the identity: the clients see the old one's last state first
            now.append(self._pending.pop(identity))
            immediate = True
        else:
            immediate = self._interval <= 0 or info.is_publisher
            if known is not None and known.sid == info.sid:
                immediate = immediate or known.is_publisher or _changed_for_others(known, info)
        if info.state == models.ParticipantInfo.DISCONNECTED:
            self._known.pop(identity, None)
        else:
            self._known[identity] = info
        if immediate:
            self._pending.pop(identity, None)
            now.append(info)
            return False
        self._pending[identity] = info
        return True

    def flush(self) -> None:
        """Send what waits for the batch."""
        self._timer = None
        pending, self._pending = self._pending, {}
        if pending:
            self._deliver(list(pending.values()))

    def close(self) -> None:
        """The room is gone: nothing more goes out."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
        self._known.clear()

    def _deliver(self, infos: list[models.ParticipantInfo]) -> None:
        for chunk in chunks(infos, self._target_size):
            self._send(chunk)
