"""What a room's clients are told about its participants, and when.

A change that matters to the others at once goes out at once, as LiveKit sends it: anything
about a publisher (its tracks come and go with it), and a change of name, metadata, attributes
or permission. The rest, the joins, state changes and leaves of participants that publish
nothing, LiveKit holds for its next batch (every 3 s). Trackyard sends them at once too while
the room's participant updates stay within a budget of client messages per second
(``room.participant_update_rate``; a message to each client counts one), and batches them
(``room.participant_update_interval``) only beyond it: a small room sees joins and leaves at
once, and a storm (N subscribers joining one room cost N x N messages through the signal edges
and Redis unbatched; a departure storm feeds on itself) costs one update per batch and client,
with the latest info of each. A batch goes as soon as the budget pays for it, at the latest
after the interval, so in a storm the budget paces the batches.
``participant_update_rate: 0`` batches always (LiveKit's way), ``participant_update_interval:
0`` never.

Updates are cut in messages of at most ``room.update_batch_target_size`` bytes (LiveKit's key).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from livekit.protocol import models

Send = Callable[[list[models.ParticipantInfo]], None]


@dataclass
class UpdateCounters:
    """This process's participant updates (exported as ``trackyard_sfu_participant_update_*``)."""

    messages: int = 0  # update messages to clients (one message to N clients counts N)
    batched: int = 0  # infos that waited for a batch


COUNTERS = UpdateCounters()


def _changed_for_others(old: models.ParticipantInfo, new: models.ParticipantInfo) -> bool:
    return (
        old.name != new.name
        or old.metadata != new.metadata
        or dict(old.attributes) != dict(new.attributes)
        or old.permission != new.permission
    )


def _older(info: models.ParticipantInfo, known: models.ParticipantInfo) -> bool:
    if info.sid == known.sid:
        return info.version < known.version
    return info.joined_at_ms < known.joined_at_ms  # an earlier session of the identity


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


class Budget:
    """Client messages a room may send unbatched: ``rate`` a second, at most a second's worth
    saved up. A batch spends too (it may leave the budget in debt: the storm goes on)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._clock = clock
        self._tokens = rate
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._rate, self._tokens + (now - self._at) * self._rate)
        self._at = now

    def take(self, messages: int) -> bool:
        """Spend ``messages`` if the budget has them."""
        self._refill()
        if self._rate <= 0 or self._tokens < messages:
            return False
        self._tokens -= messages
        return True

    def spend(self, messages: int) -> None:
        self._refill()
        self._tokens -= messages

    def wait(self, messages: int, at_most: float) -> float:
        """Seconds until the budget has ``messages``, capped at ``at_most``."""
        self._refill()
        if self._rate <= 0:
            return at_most
        return min(at_most, max(0.0, (messages - self._tokens) / self._rate))


class ParticipantUpdates:
    """One room's participant updates to its clients (see the module docstring).

    ``send`` is given the infos of one update message, for every client of the room;
    ``audience`` says how many clients that is now."""

    def __init__(
        self,
        send: Send,
        audience: Callable[[], int],
        *,
        interval: float,
        rate: float,
        target_size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._audience = audience
        self._interval = interval
        self._budget = Budget(rate, clock)
        self._target_size = target_size
        self._pending: dict[str, models.ParticipantInfo] = {}  # identity -> latest, not sent
        self._known: dict[str, models.ParticipantInfo] = {}  # identity -> latest pushed
        self._timer: asyncio.TimerHandle | None = None

    def push(self, *infos: models.ParticipantInfo) -> bool:
        """``infos`` changed: each goes now, or with the next batch. True when none waits."""
        now: list[models.ParticipantInfo] = []
        later: dict[str, models.ParticipantInfo] = {}  # identity -> info, in push order
        for info in infos:
            self._push(info, now, later)
        audience = self._audience()
        if later and not self._pending and self._budget.take(audience):
            now.extend(later.values())  # within the budget and no batch waiting: no need to wait
            later = {}
        elif now:
            self._budget.spend(audience)
        self._pending.update(later)
        COUNTERS.batched += len(later)
        if now:
            self._deliver(now, audience)
        if later and self._timer is None:
            # the batch goes once the budget pays for it, at the latest after the interval
            delay = self._budget.wait(audience, self._interval)
            self._timer = asyncio.get_running_loop().call_later(delay, self.flush)
        return not later

    def _push(
        self,
        info: models.ParticipantInfo,
        now: list[models.ParticipantInfo],
        later: dict[str, models.ParticipantInfo],
    ) -> None:
        identity = info.identity
        known = self._known.get(identity)
        if known is not None and _older(info, known):
            return  # the clients have a newer view of this session, or a newer session
        waiting = later.pop(identity, None) or self._pending.get(identity)
        if waiting is not None and waiting.sid != info.sid:
            # another session of the identity: the clients see the old one's last state first
            self._pending.pop(identity, None)
            now.append(waiting)
            immediate = True
        else:
            immediate = self._interval <= 0 or info.is_publisher
            if known is not None and known.sid == info.sid:
                immediate = immediate or known.is_publisher or _changed_for_others(known, info)
        self._known[identity] = info  # a session's end too: a late view of it stays dropped
        if immediate:
            self._pending.pop(identity, None)
            now.append(info)
        else:
            later[identity] = info

    def flush(self) -> None:
        """Send what waits for the batch."""
        if self._timer is not None:
            self._timer.cancel()  # when called before its time
            self._timer = None
        pending, self._pending = self._pending, {}
        if pending:
            audience = self._audience()
            self._budget.spend(audience)
            self._deliver(list(pending.values()), audience)

    def close(self) -> None:
        """The room is gone: nothing more goes out."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
        self._known.clear()

    def _deliver(self, infos: list[models.ParticipantInfo], audience: int) -> None:
        for chunk in chunks(infos, self._target_size):
            self._send(chunk)
            COUNTERS.messages += audience
