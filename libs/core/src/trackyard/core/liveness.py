"""Who is dead, judged the same way by every process: routers, edges and nodes.

Three rules, each guarding against one way of mistaking a hiccup for a death:

- **Missed heartbeats, relative to the peers.** An SFU node writes its record every
  ``node.heartbeat_interval``; the store stamps each write with its own clock. A node is dead
  when its last heartbeat lags the freshest node's by ``node.dead_after`` or more. A slow
  node that still beats is alive; a Redis that stalls (or the watcher's own stall) delays
  everyone's heartbeat alike, so nobody falls behind and nobody is declared dead. With one
  node there is no peer to compare with: its record's TTL decides.
- **A missing record counts only after a grace.** A Redis that restarted empty holds no
  records until each process writes again.
- **A store that forgot is not a cluster that died.** :class:`StoreGeneration` notices when
  the store's generation changed (it restarted empty) or could not be read; for the grace
  that follows, missing records and missing placements mean nothing.
"""

from __future__ import annotations

import time

from trackyard.core.store import Store


def stale_nodes(ages: dict[str, float], dead_after: float) -> set[str]:
    """Nodes whose heartbeat lags the freshest one by ``dead_after`` seconds or more."""
    if len(ages) < 2:
        return set()
    freshest = min(ages.values())
    return {node for node, age in ages.items() if age - freshest >= dead_after}


class StoreGeneration:
    """Tracks the store's generation; ``settling()`` is true for ``grace`` seconds after it
    changed and after the store was unreachable (``at_start``: also right after start-up,
    for watchers that must not judge before they saw the cluster once)."""

    def __init__(self, grace: float, *, at_start: bool = False) -> None:
        self.grace = grace
        self.value: str | None = None
        self._since = time.monotonic() if at_start else -float("inf")

    async def observe(self, store: Store) -> str | None:
        """Read the generation now; None (and a fresh grace) when the store does not answer."""
        try:
            value = await store.generation()
        except Exception:
            self._since = time.monotonic()
            return None
        if value != self.value:
            if self.value is not None:
                self._since = time.monotonic()
            self.value = value
        return value

    def unsettled(self) -> None:
        """Something else showed the store misbehaving (a failed read): restart the grace."""
        self._since = time.monotonic()

    def settling(self) -> bool:
        return self.remaining() > 0

    def remaining(self) -> float:
        return max(0.0, self.grace - (time.monotonic() - self._since))
