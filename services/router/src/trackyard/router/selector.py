"""Choose the SFU node for a new room: LiveKit's node selectors, plus placement limits."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Final

import structlog

from trackyard.core.config import LimitConfig, NodeSelectorConfig, RegionConfig
from trackyard.core.node import NODE_FRESH_SECONDS, NodeRecord, NodeStats

__all__ = [
    "ALGORITHMS",
    "EARTH_RADIUS_METERS",
    "KINDS",
    "SORT_BY_OPTIONS",
    "NoAvailableNodesError",
    "NodeSelector",
    "SelectorConfigError",
    "SelectorError",
    "build_selector",
    "distance_between",
    "limits_reached",
]

log = structlog.get_logger(__name__)

KINDS: Final = ("any", "random", "cpuload", "sysload", "regionaware")
SORT_BY_OPTIONS: Final = (
    "random",
    "sysload",
    "cpuload",
    "rooms",
    "clients",
    "tracks",
    "bytespersec",
)
ALGORITHMS: Final = ("lowest", "twochoice")

# The radius LiveKit uses, so distances (and therefore tie-breaks) match theirs.
EARTH_RADIUS_METERS: Final = 6_378_100.0

_SORT_KEYS: Final[dict[str, Callable[[NodeStats], float]]] = {
    "sysload": lambda s: s.sysload,
    "cpuload": lambda s: s.cpu_load,
    "rooms": lambda s: s.rooms,
    "clients": lambda s: s.clients,
    "tracks": lambda s: s.tracks_in + s.tracks_out,
    "bytespersec": lambda s: s.bytes_per_sec,
}

_default_rng = random.Random()


class SelectorError(Exception):
    """Base of everything the node selector raises."""


class SelectorConfigError(SelectorError):
    """The ``node_selector`` configuration cannot be used; the message names the key."""


class NoAvailableNodesError(SelectorError):
    """No node may be given a new room right now."""


def distance_between(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in meters between two lat/lon points in degrees."""
    la1, lo1, la2, lo2 = map(math.radians, (lat1, lon1, lat2, lon2))
    h = (
        math.sin((la2 - la1) / 2) ** 2
        + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    )
    # min() guards asin against rounding pushing h a hair above 1 for antipodal points.
    return 2 * EARTH_RADIUS_METERS * math.asin(math.sqrt(min(h, 1.0)))


def limits_reached(limits: LimitConfig, stats: NodeStats) -> bool:
    """True when the node is at or over ``limit.num_tracks`` or ``limit.bytes_per_sec``."""
    if limits.num_tracks > 0 and stats.tracks_in + stats.tracks_out >= limits.num_tracks:
        return True
    return limits.bytes_per_sec > 0 and stats.bytes_per_sec >= limits.bytes_per_sec


def _expect(key: str, value: str, allowed: Sequence[str], what: str = "value") -> str:
    choices = ", ".join(allowed)
    if value == "":
        raise SelectorConfigError(f"{key}: cannot be blank (expected one of {choices})")
    if value not in allowed:
        raise SelectorConfigError(f"{key}: {what} {value!r} (expected one of {choices})")
    return value


def _finite(value: float) -> float:
    # A node reporting NaN must sort last, not poison min() and the equality test after it.
    return value if math.isfinite(value) else math.inf


class NodeSelector:
    """Validated selector; build it with :func:`build_selector` at start-up."""

    def __init__(
        self, cfg: NodeSelectorConfig, limits: LimitConfig, current_region: str = ""
    ) -> None:
        kind = cfg.kind or "any"  # LiveKit treats a blank kind as "any"
        kind = _expect("node_selector.kind", kind, KINDS, what="unsupported node selector kind")
        if kind == "random":
            log.warning("node_selector.kind 'random' is deprecated, use 'any' instead")
            kind = "any"
        self.kind: Final = kind
        self.sort_by: Final = _expect(
            "node_selector.sort_by", cfg.sort_by, SORT_BY_OPTIONS, what="unknown value"
        )
        self.algorithm: Final = _expect(
            "node_selector.algorithm", cfg.algorithm, ALGORITHMS, what="unknown value"
        )
        for key, limit in (
            ("node_selector.cpu_load_limit", cfg.cpu_load_limit),
            ("node_selector.sysload_limit", cfg.sysload_limit),
        ):
            if math.isnan(limit):
                raise SelectorConfigError(f"{key}: must be a number (got nan)")
        self.cpu_load_limit: Final = cfg.cpu_load_limit
        self.sysload_limit: Final = cfg.sysload_limit
        self.limits: Final = limits
        self.current_region: Final = current_region
        # Distance in meters from the current region to every configured region; empty when
        # the kind is not regionaware or no regions are configured (then no region preference,
        # as in LiveKit's "works without region config").
        self.region_distances: Final = (
            _region_distances(current_region, cfg.regions) if kind == "regionaware" else {}
        )
        self._sort_key = _SORT_KEYS.get(self.sort_by)

    def __repr__(self) -> str:
        return (
            f"NodeSelector(kind={self.kind!r}, sort_by={self.sort_by!r}, "
            f"algorithm={self.algorithm!r}, current_region={self.current_region!r})"
        )

    def candidates(
        self, nodes: Sequence[NodeRecord], *, now: float | None = None
    ) -> list[NodeRecord]:
        """The nodes the final sort-and-pick step chooses from, in input order.

        Raises :class:`NoAvailableNodesError` when there are none.
        """
        now = time.time() if now is None else now
        available = [n for n in nodes if n.is_available(now)]
        if not available:
            raise NoAvailableNodesError(
                f"could not find any available nodes ({len(nodes)} known, none SERVING "
                f"and updated within {NODE_FRESH_SECONDS:g}s)"
            )
        # Beyond LiveKit (which only checks limits once a room is already placed): a node at
        # its limits never gets a new room, even as the load filter's fallback.
        under_limits = [n for n in available if not limits_reached(self.limits, n.stats)]
        if not under_limits:
            raise NoAvailableNodesError(
                f"could not find any available nodes: all {len(available)} available nodes "
                f"are at their limits (limit.num_tracks={self.limits.num_tracks}, "
                f"limit.bytes_per_sec={self.limits.bytes_per_sec:g})"
            )
        return self._nearest_region(self._under_load(under_limits))

    def select(
        self,
        nodes: Sequence[NodeRecord],
        *,
        now: float | None = None,
        rng: random.Random | None = None,
    ) -> NodeRecord:
        """Pick the node for a new room; raises :class:`NoAvailableNodesError`."""
        rng = _default_rng if rng is None else rng
        pool = self.candidates(nodes, now=now)
        # Power of two random choices; with two nodes or fewer it is the same as "lowest".
        if self.algorithm == "twochoice" and len(pool) > 2:
            pool = rng.sample(pool, 2)
        return self._lowest(pool, rng)

    # -- steps --------------------------------------------------------------------------

    def has_capacity(self, node: NodeRecord) -> bool:
        """The node is under ``limit.*`` and under this selector's load limit: it may take
        more without the load filter's fall-back to overloaded nodes."""
        return not limits_reached(self.limits, node.stats) and self._light(node)

    def lowest(
        self, nodes: Sequence[NodeRecord], *, rng: random.Random | None = None
    ) -> NodeRecord:
        """The node ``sort_by`` puts first among ``nodes`` (ties at random), no filtering."""
        if not nodes:
            raise NoAvailableNodesError("no nodes to choose from")
        return self._lowest(list(nodes), _default_rng if rng is None else rng)

    def _light(self, node: NodeRecord) -> bool:
        if self.kind == "cpuload":
            return node.stats.cpu_load < self.cpu_load_limit
        if self.kind in ("sysload", "regionaware"):
            return node.stats.sysload < self.sysload_limit
        return True

    def _under_load(self, nodes: list[NodeRecord]) -> list[NodeRecord]:
        low = [n for n in nodes if self._light(n)]
        # Every node over the limit: an overloaded node beats refusing the room.
        return low or nodes

    def _nearest_region(self, nodes: list[NodeRecord]) -> list[NodeRecord]:
        if not self.region_distances:
            return nodes
        # Nodes in a region missing from node_selector.regions are infinitely far: used only
        # when no node is in a known region. (LiveKit's loop also happens to prefer nodes with
        # a blank region in that case; we treat blank like any other unknown region.)
        known = [
            (self.region_distances[n.region], n) for n in nodes if n.region in self.region_distances
        ]
        if not known:
            return nodes
        nearest = min(d for d, _ in known)
        # Two configured regions at the same distance (same coordinates) are equally near;
        # LiveKit would keep whichever it met first in the node list.
        return [n for d, n in known if d == nearest]

    def _lowest(self, nodes: list[NodeRecord], rng: random.Random) -> NodeRecord:
        key = self._sort_key
        if key is None:  # sort_by random
            return rng.choice(nodes)
        values = [_finite(float(key(n.stats))) for n in nodes]
        best = min(values)
        # Ties broken at random so equally loaded nodes share new rooms instead of the first
        # in the store's order getting them all.
        return rng.choice([n for n, v in zip(nodes, values, strict=True) if v == best])


def _region_distances(current_region: str, regions: Sequence[RegionConfig]) -> dict[str, float]:
    if not current_region:
        raise SelectorConfigError(
            "region: current region cannot be blank when node_selector.kind is 'regionaware'"
        )
    seen: set[str] = set()
    for i, rc in enumerate(regions):
        key = f"node_selector.regions[{i}]"
        if not rc.name:
            raise SelectorConfigError(f"{key}.name: cannot be blank")
        if rc.name in seen:
            raise SelectorConfigError(f"{key}.name: region {rc.name!r} is listed twice")
        seen.add(rc.name)
        if not -90.0 <= rc.lat <= 90.0:
            raise SelectorConfigError(f"{key}.lat: {rc.lat} is outside [-90, 90]")
        if not -180.0 <= rc.lon <= 180.0:
            raise SelectorConfigError(f"{key}.lon: {rc.lon} is outside [-180, 180]")
    if not regions:
        return {}
    current = next((rc for rc in regions if rc.name == current_region), None)
    if current is None:
        names = ", ".join(rc.name for rc in regions)
        raise SelectorConfigError(
            f"region: current region {current_region!r} not found in regions "
            f"(node_selector.regions lists {names})"
        )
    return {rc.name: distance_between(current.lat, current.lon, rc.lat, rc.lon) for rc in regions}


def build_selector(
    cfg: NodeSelectorConfig, limits: LimitConfig, current_region: str
) -> NodeSelector:
    """Validate the ``node_selector`` and ``limit`` config; raises :class:`SelectorConfigError`."""
    return NodeSelector(cfg, limits, current_region)
