"""A node's record in the cluster: who it is, where it is, how loaded it is."""

from __future__ import annotations

import enum
import time

from pydantic import BaseModel, Field

# A node whose record is older than this is not offered new rooms (DESIGN §4).
NODE_FRESH_SECONDS = 5.0


class NodeState(enum.StrEnum):
    SERVING = "SERVING"
    SHUTTING_DOWN = "SHUTTING_DOWN"


class NodeStats(BaseModel):
    """Load figures a node reports every stats interval."""

    cpus: int = 1
    cpu_load: float = 0.0  # 0..1, share of all cores busy
    sysload: float = 0.0  # 1-minute load average / cpus
    rooms: int = 0
    clients: int = 0
    tracks_in: int = 0
    tracks_out: int = 0
    bytes_in_per_sec: float = 0.0
    bytes_out_per_sec: float = 0.0
    packets_in_per_sec: float = 0.0
    packets_out_per_sec: float = 0.0
    updated_at: float = Field(default_factory=time.time)

    @property
    def bytes_per_sec(self) -> float:
        return self.bytes_in_per_sec + self.bytes_out_per_sec


class NodeRecord(BaseModel):
    """What every SFU node writes to the store every stats interval, with a TTL."""

    id: str  # "ND_..."
    address: str = ""  # internal address (host:port) of the node's HTTP API
    region: str = ""
    host: str = ""  # the host it runs on: the nodes of one `trackyard sfu --workers K` share it
    state: NodeState = NodeState.SERVING
    # while draining with a deadline: when (epoch seconds) its participants are moved elsewhere
    drain_deadline_at: float | None = None
    started_at: float = Field(default_factory=time.time)
    stats: NodeStats = Field(default_factory=NodeStats)

    def is_available(self, now: float | None = None) -> bool:
        """Fresh and SERVING: may be given new rooms."""
        now = time.time() if now is None else now
        return self.state is NodeState.SERVING and now - self.stats.updated_at <= NODE_FRESH_SECONDS
