"""Node selector: LiveKit's selector tests as a checklist, our limits, and property tests."""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackyard.core.config import Config, LimitConfig, NodeSelectorConfig, RegionConfig
from trackyard.core.node import NodeRecord, NodeState, NodeStats
from trackyard.router.selector import (
    ALGORITHMS,
    EARTH_RADIUS_METERS,
    KINDS,
    SORT_BY_OPTIONS,
    NoAvailableNodesError,
    NodeSelector,
    SelectorConfigError,
    SelectorError,
    build_selector,
    distance_between,
    limits_reached,
)

NOW = 1_700_000_000.0

WEST = RegionConfig(name="us-west", lat=37.64046607830567, lon=-120.88026233189062)
EAST = RegionConfig(name="us-east", lat=40.68914362140307, lon=-74.04445748616385)
SEATTLE = RegionConfig(name="seattle", lat=47.620426730945454, lon=-122.34938468973702)
REGIONS = [WEST, EAST, SEATTLE]

_ids = itertools.count()


def make_node(
    node_id: str | None = None,
    *,
    region: str = "",
    state: NodeState = NodeState.SERVING,
    age: float = 1.0,
    cpus: int = 1,
    cpu_load: float = 0.0,
    sysload: float = 0.0,
    rooms: int = 0,
    clients: int = 0,
    tracks_in: int = 0,
    tracks_out: int = 0,
    bytes_in: float = 0.0,
    bytes_out: float = 0.0,
) -> NodeRecord:
    return NodeRecord(
        id=node_id or f"ND_{next(_ids)}",
        region=region,
        state=state,
        stats=NodeStats(
            cpus=cpus,
            cpu_load=cpu_load,
            sysload=sysload,
            rooms=rooms,
            clients=clients,
            tracks_in=tracks_in,
            tracks_out=tracks_out,
            bytes_in_per_sec=bytes_in,
            bytes_out_per_sec=bytes_out,
            updated_at=NOW - age,
        ),
    )


def _stats(values: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for make_node picked at run time (typed loosely on purpose)."""
    return values


def make_selector(
    kind: str = "any",
    sort_by: str = "random",
    algorithm: str = "lowest",
    *,
    cpu_load_limit: float = 0.9,
    sysload_limit: float = 0.9,
    regions: Sequence[RegionConfig] = (),
    current_region: str = "",
    num_tracks: int = 0,
    bytes_per_sec: float = 0.0,
) -> NodeSelector:
    cfg = NodeSelectorConfig(
        kind=kind,
        sort_by=sort_by,
        algorithm=algorithm,
        cpu_load_limit=cpu_load_limit,
        sysload_limit=sysload_limit,
        regions=list(regions),
    )
    limits = LimitConfig(num_tracks=num_tracks, bytes_per_sec=bytes_per_sec)
    return build_selector(cfg, limits, current_region)


def pick(sel: NodeSelector, nodes: Sequence[NodeRecord], seed: int = 0) -> NodeRecord:
    return sel.select(nodes, now=NOW, rng=random.Random(seed))


def picks(sel: NodeSelector, nodes: Sequence[NodeRecord], runs: int = 200) -> set[str]:
    return {pick(sel, nodes, seed).id for seed in range(runs)}


# LiveKit's sysload_test.go fixtures.
def load_low() -> NodeRecord:
    return make_node(
        "low", cpu_load=0.1, sysload=0.0, rooms=1, clients=2, tracks_in=4, tracks_out=8,
        bytes_in=1000, bytes_out=2000,
    )  # fmt: skip


def load_medium() -> NodeRecord:
    return make_node(
        "medium", cpu_load=0.5, sysload=0.5, rooms=5, clients=10, tracks_in=20, tracks_out=200,
        bytes_in=5000, bytes_out=10000,
    )  # fmt: skip


def load_high() -> NodeRecord:
    return make_node(
        "high", cpu_load=0.99, sysload=2.0, rooms=10, clients=20, tracks_in=40, tracks_out=800,
        bytes_in=10000, bytes_out=40000,
    )  # fmt: skip


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "sort_by", "algorithm"), list(itertools.product(KINDS, SORT_BY_OPTIONS, ALGORITHMS))
)
def test_every_valid_combination_builds_and_selects(
    kind: str, sort_by: str, algorithm: str
) -> None:
    sel = make_selector(kind, sort_by, algorithm, regions=REGIONS, current_region="us-east")
    nodes = [load_low(), load_medium(), load_high()]
    assert pick(sel, nodes) in nodes
    assert sel.sort_by == sort_by
    assert sel.algorithm == algorithm


def test_defaults_are_livekit_defaults() -> None:
    sel = build_selector(NodeSelectorConfig(), LimitConfig(), "")
    assert (sel.kind, sel.sort_by, sel.algorithm) == ("any", "random", "lowest")
    assert sel.cpu_load_limit == 0.9
    assert sel.sysload_limit == 0.9


def test_builds_from_the_loaded_config() -> None:
    cfg = Config.from_mapping(
        {
            "region": "us-east",
            "node_selector": {
                "kind": "regionaware",
                "sort_by": "rooms",
                "algorithm": "twochoice",
                "sysload_limit": 0.7,
                "regions": [r.model_dump() for r in REGIONS],
            },
            "limit": {"num_tracks": 100},
        }
    )
    sel = build_selector(cfg.node_selector, cfg.limit, cfg.region)
    assert sel.kind == "regionaware"
    assert sel.region_distances["us-east"] == 0.0
    assert sel.limits.num_tracks == 100


def test_blank_kind_means_any() -> None:
    assert make_selector("").kind == "any"


def test_random_kind_is_an_alias_of_any() -> None:
    sel = make_selector("random")
    assert sel.kind == "any"
    nodes = [make_node("a", sysload=5.0), make_node("b", sysload=5.0)]
    assert picks(sel, nodes) == {"a", "b"}


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(SelectorConfigError) as exc:
        make_selector("leastload")
    msg = str(exc.value)
    assert msg.startswith("node_selector.kind: unsupported node selector kind 'leastload'")
    for kind in KINDS:
        assert kind in msg


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("sort_by", "foo", "node_selector.sort_by: unknown value 'foo' (expected one of random,"),
        ("sort_by", "", "node_selector.sort_by: cannot be blank (expected one of random,"),
        ("sort_by", "CPULoad", "node_selector.sort_by: unknown value 'CPULoad'"),
        ("algorithm", "foo", "node_selector.algorithm: unknown value 'foo' (expected one of"),
        ("algorithm", "", "node_selector.algorithm: cannot be blank (expected one of lowest,"),
    ],
)
def test_bad_sort_by_or_algorithm_is_refused(field: str, value: str, expected: str) -> None:
    args = {"sort_by": "cpuload", "algorithm": "twochoice", field: value}
    with pytest.raises(SelectorConfigError) as exc:
        make_selector("any", args["sort_by"], args["algorithm"])
    assert str(exc.value).startswith(expected)


def test_sort_by_is_checked_at_build_time_whatever_the_kind() -> None:
    # LiveKit only notices a bad sort_by at the first selection; we refuse it at start-up.
    for kind in ("any", "cpuload", "sysload"):
        with pytest.raises(SelectorConfigError, match=r"node_selector\.sort_by"):
            make_selector(kind, "testFail")


def test_regionaware_needs_the_current_region() -> None:
    with pytest.raises(SelectorConfigError, match="current region cannot be blank"):
        make_selector("regionaware", regions=REGIONS, current_region="")


def test_regionaware_current_region_must_be_listed() -> None:
    with pytest.raises(SelectorConfigError) as exc:
        make_selector("regionaware", regions=REGIONS, current_region="mars")
    msg = str(exc.value)
    assert "current region 'mars' not found in regions" in msg
    assert "us-west, us-east, seattle" in msg


def test_regionaware_works_without_region_config() -> None:
    # LiveKit: "works without region config" — no regions, no region preference.
    sel = make_selector("regionaware", current_region="us-east")
    assert sel.region_distances == {}
    node = make_node(sysload=1.0)
    assert pick(sel, [node]) is node


def test_other_kinds_ignore_region_settings() -> None:
    sel = make_selector("sysload", regions=REGIONS, current_region="mars")
    assert sel.region_distances == {}
    far = make_node("far", region="seattle")
    near = make_node("near", region="us-east")
    assert picks(sel, [far, near]) == {"far", "near"}


@pytest.mark.parametrize(
    ("regions", "expected"),
    [
        ([WEST, WEST], "node_selector.regions[1].name: region 'us-west' is listed twice"),
        (
            [WEST, RegionConfig(name="x", lat=91, lon=0)],
            "node_selector.regions[1].lat: 91.0 is outside [-90, 90]",
        ),
        (
            [RegionConfig(name="x", lat=0, lon=-181), WEST],
            "node_selector.regions[0].lon: -181.0 is outside [-180, 180]",
        ),
        ([RegionConfig(name="", lat=0, lon=0)], "node_selector.regions[0].name: cannot be blank"),
        (
            [WEST, RegionConfig(name="x", lat=math.nan, lon=0)],
            "node_selector.regions[1].lat: nan is outside [-90, 90]",
        ),
    ],
)
def test_bad_regions_are_refused(regions: list[RegionConfig], expected: str) -> None:
    with pytest.raises(SelectorConfigError) as exc:
        make_selector("regionaware", regions=regions, current_region="us-west")
    assert str(exc.value) == expected


@pytest.mark.parametrize("key", ["cpu_load_limit", "sysload_limit"])
def test_nan_load_limit_is_refused(key: str) -> None:
    cfg = NodeSelectorConfig(kind="sysload", **{key: math.nan})
    expected = re.escape(f"node_selector.{key}: must be a number")
    with pytest.raises(SelectorConfigError, match=expected):
        build_selector(cfg, LimitConfig(), "")


def test_errors_share_one_base() -> None:
    assert issubclass(SelectorConfigError, SelectorError)
    assert issubclass(NoAvailableNodesError, SelectorError)
    assert issubclass(SelectorError, Exception)


# -- availability -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["any", "cpuload", "sysload", "regionaware"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_nodes(kind: str, algorithm: str) -> None:
    sel = make_selector(kind, "cpuload", algorithm, regions=REGIONS, current_region="us-east")
    with pytest.raises(NoAvailableNodesError, match="could not find any available nodes"):
        sel.select([], now=NOW)


def test_stale_node_is_not_available() -> None:
    sel = make_selector(sort_by="cpuload", algorithm="twochoice")
    with pytest.raises(NoAvailableNodesError, match="could not find any available nodes"):
        pick(sel, [make_node(age=10, cpu_load=0.3)])


def test_shutting_down_node_is_not_available() -> None:
    sel = make_selector(sort_by="cpuload", algorithm="twochoice")
    with pytest.raises(NoAvailableNodesError, match="could not find any available nodes"):
        pick(sel, [make_node(state=NodeState.SHUTTING_DOWN)])


def test_only_fresh_serving_nodes_are_picked() -> None:
    good = make_node("good", cpu_load=0.9)
    nodes = [
        make_node("stale", age=20),
        make_node("draining", state=NodeState.SHUTTING_DOWN),
        good,
        make_node("barely-stale", age=5.5),
    ]
    for algorithm in ALGORITHMS:
        for sort_by in SORT_BY_OPTIONS:
            assert picks(make_selector("any", sort_by, algorithm), nodes, 50) == {"good"}


def test_still_available_within_five_seconds() -> None:
    node = make_node(age=3)
    assert pick(make_selector(), [node]) is node


def test_now_defaults_to_the_clock() -> None:
    fresh = NodeRecord(id="ND_fresh")  # updated_at defaults to time.time()
    stale = make_node("stale")  # updated a long time ago as far as the real clock goes
    assert make_selector().select([fresh, stale]) is fresh


def test_select_does_not_reorder_the_input() -> None:
    # LiveKit sorts the caller's slice in place; we leave it alone.
    nodes = [load_high(), load_medium(), load_low()]
    before = [n.id for n in nodes]
    assert pick(make_selector(sort_by="cpuload"), nodes).id == "low"
    assert [n.id for n in nodes] == before


def test_same_seed_same_choice() -> None:
    nodes = [make_node() for _ in range(10)]
    sel = make_selector(sort_by="random", algorithm="twochoice")
    assert [pick(sel, nodes, s).id for s in range(20)] == [
        pick(sel, nodes, s).id for s in range(20)
    ]


# -- limits (beyond LiveKit) ----------------------------------------------------------------


def test_limits_reached() -> None:
    unlimited = LimitConfig()
    busy = NodeStats(tracks_in=10**6, tracks_out=10**6, bytes_in_per_sec=1e12)
    assert not limits_reached(unlimited, busy)

    tracks = LimitConfig(num_tracks=10)
    assert not limits_reached(tracks, NodeStats(tracks_in=4, tracks_out=5))
    assert limits_reached(tracks, NodeStats(tracks_in=4, tracks_out=6))  # at the limit
    assert limits_reached(tracks, NodeStats(tracks_in=0, tracks_out=11))

    rate = LimitConfig(bytes_per_sec=1000)
    assert not limits_reached(rate, NodeStats(bytes_in_per_sec=500, bytes_out_per_sec=499))
    assert limits_reached(rate, NodeStats(bytes_in_per_sec=500, bytes_out_per_sec=500))
    assert limits_reached(rate, NodeStats(bytes_out_per_sec=2000))


@pytest.mark.parametrize("kind", ["any", "cpuload", "sysload", "regionaware"])
def test_nodes_at_track_limit_get_no_new_rooms(kind: str) -> None:
    sel = make_selector(kind, num_tracks=100, regions=REGIONS, current_region="us-east")
    full = make_node("full", region="us-east", tracks_in=50, tracks_out=50)
    ok = make_node("ok", region="seattle", tracks_in=50, tracks_out=49, cpu_load=1, sysload=9)
    assert picks(sel, [full, ok]) == {"ok"}


def test_nodes_at_bytes_limit_get_no_new_rooms() -> None:
    sel = make_selector(sort_by="bytespersec", bytes_per_sec=1e6)
    full = make_node("full", bytes_in=6e5, bytes_out=4e5)
    ok = make_node("ok", bytes_in=9e5, bytes_out=99_999)
    assert picks(sel, [full, ok]) == {"ok"}


def test_limit_exclusion_comes_before_the_load_fallback() -> None:
    # The only under-load node is at its track limit: the overloaded one gets the room, and
    # the full one is not brought back by the "all nodes over the limit" fallback.
    sel = make_selector("cpuload", "cpuload", num_tracks=10)
    full = make_node("full", cpu_load=0.1, tracks_in=10)
    hot = make_node("hot", cpu_load=0.95)
    assert picks(sel, [full, hot]) == {"hot"}


def test_all_nodes_at_their_limits() -> None:
    sel = make_selector(num_tracks=10, bytes_per_sec=100)
    nodes = [make_node(tracks_out=10), make_node(bytes_in=100), make_node(age=30)]
    with pytest.raises(NoAvailableNodesError) as exc:
        pick(sel, nodes)
    msg = str(exc.value)
    assert "all 2 available nodes are at their limits" in msg
    assert "limit.num_tracks=10" in msg


def test_zero_limits_are_unlimited() -> None:
    node = make_node(tracks_in=10**6, bytes_in=1e12)
    assert pick(make_selector(num_tracks=0, bytes_per_sec=0), [node]) is node


# -- load filters (LiveKit cpuload_test.go / sysload_test.go) -------------------------------


def test_cpuload_selector() -> None:
    sel = make_selector("cpuload", cpu_load_limit=0.8)
    with pytest.raises(NoAvailableNodesError):
        pick(sel, [])
    high = load_high()
    assert pick(sel, [high]) is high  # all overloaded: fall back to all available
    low = load_low()
    for seed in range(5):
        assert pick(sel, [low, high], seed) is low


def test_sysload_selector() -> None:
    sel = make_selector("sysload", sysload_limit=1.0)
    with pytest.raises(NoAvailableNodesError):
        pick(sel, [])
    high = load_high()
    assert pick(sel, [high]) is high
    low = load_low()
    for seed in range(5):
        assert pick(sel, [low, high], seed) is low


def test_load_limits_are_strict() -> None:
    at = make_node("at", cpu_load=0.8, sysload=0.8)
    under = make_node("under", cpu_load=0.79, sysload=0.79)
    assert picks(make_selector("cpuload", cpu_load_limit=0.8), [at, under]) == {"under"}
    assert picks(make_selector("sysload", sysload_limit=0.8), [at, under]) == {"under"}


def test_each_kind_filters_on_its_own_metric() -> None:
    busy_cpu = make_node("busy_cpu", cpu_load=0.95, sysload=0.1)
    busy_sys = make_node("busy_sys", cpu_load=0.1, sysload=0.95)
    nodes = [busy_cpu, busy_sys]
    assert picks(make_selector("cpuload"), nodes) == {"busy_sys"}
    assert picks(make_selector("sysload"), nodes) == {"busy_cpu"}
    assert picks(make_selector("regionaware", current_region="x"), nodes) == {"busy_cpu"}
    assert picks(make_selector("any"), nodes) == {"busy_cpu", "busy_sys"}


def test_any_does_not_filter_on_load() -> None:
    nodes = [load_low(), load_medium(), load_high()]
    assert picks(make_selector("any"), nodes) == {"low", "medium", "high"}


# -- sort_by (LiveKit sortby_test.go) -------------------------------------------------------


@pytest.mark.parametrize(
    "sort_by", ["sysload", "cpuload", "rooms", "clients", "tracks", "bytespersec"]
)
def test_sort_by_picks_lowest(sort_by: str) -> None:
    # LiveKit runs this with a zero sysload limit: every node is "overloaded", all kept.
    sel = make_selector("sysload", sort_by, "lowest", sysload_limit=0.0)
    nodes = [load_low(), load_medium(), load_high()]
    for seed in range(5):
        assert pick(sel, nodes, seed).id == "low"


_ONLY_BETTER_ON: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # (the node that must win, the other): the winner is worse on every other metric.
    "sysload": ({"sysload": 0.1}, {"sysload": 0.2}),
    "cpuload": ({"cpu_load": 0.1}, {"cpu_load": 0.2}),
    "rooms": ({"rooms": 1}, {"rooms": 2}),
    "clients": ({"clients": 1}, {"clients": 2}),
    # tracks is in + out: 10 + 0 beats 3 + 8 although 3 < 10 inbound.
    "tracks": ({"tracks_in": 10, "tracks_out": 0}, {"tracks_in": 3, "tracks_out": 8}),
    # bytespersec is in + out as well.
    "bytespersec": ({"bytes_in": 900, "bytes_out": 0}, {"bytes_in": 100, "bytes_out": 801}),
}


@pytest.mark.parametrize("sort_by", sorted(_ONLY_BETTER_ON))
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sort_by_uses_its_own_metric(sort_by: str, algorithm: str) -> None:
    worst = {
        "sysload": 0.5, "cpu_load": 0.5, "rooms": 50, "clients": 50, "tracks_in": 50,
        "tracks_out": 50, "bytes_in": 5000, "bytes_out": 5000,
    }  # fmt: skip
    best: dict[str, Any] = dict(worst)
    other: dict[str, Any] = dict.fromkeys(worst, 0.0)
    win, lose = _ONLY_BETTER_ON[sort_by]
    best.update(win)
    other.update(lose)
    a = make_node("winner", **best)
    b = make_node("loser", **other)
    sel = make_selector("any", sort_by, algorithm, cpu_load_limit=10)
    assert picks(sel, [b, a], 50) == {"winner"}


@pytest.mark.parametrize(
    ("sort_by", "inbound", "outbound"),
    [("tracks", "tracks_in", "tracks_out"), ("bytespersec", "bytes_in", "bytes_out")],
)
def test_sort_by_adds_inbound_and_outbound(sort_by: str, inbound: str, outbound: str) -> None:
    # Lowest by in + out, but neither lowest inbound nor lowest outbound.
    nodes = [
        make_node("sum", **_stats({inbound: 5, outbound: 5})),
        make_node("in", **_stats({inbound: 0, outbound: 11})),
        make_node("out", **_stats({inbound: 11, outbound: 0})),
    ]
    assert picks(make_selector(sort_by=sort_by), nodes) == {"sum"}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sort_by_random_reaches_every_node(algorithm: str) -> None:
    nodes = [load_low(), load_medium(), load_high()]
    sel = make_selector("any", "random", algorithm)
    counts = {n.id: 0 for n in nodes}
    for seed in range(900):
        counts[pick(sel, nodes, seed).id] += 1
    # random with either algorithm is a uniform pick (twochoice of two random ones is random).
    assert all(200 < c < 400 for c in counts.values()), counts


def test_ties_are_shared() -> None:
    nodes = [make_node(str(i), rooms=3) for i in range(4)] + [make_node("busy", rooms=4)]
    for algorithm in ALGORITHMS:
        sel = make_selector(sort_by="rooms", algorithm=algorithm)
        assert picks(sel, nodes) == {"0", "1", "2", "3"}


def test_nan_stats_sort_last() -> None:
    broken = make_node("broken", cpu_load=math.nan)
    fine = make_node("fine", cpu_load=0.99)
    assert picks(make_selector(sort_by="cpuload"), [broken, fine]) == {"fine"}
    assert pick(make_selector(sort_by="cpuload"), [broken]) is broken


# -- twochoice (LiveKit any_test.go) --------------------------------------------------------


def lk_node(node_id: str, cpu_load: float, rooms: int, clients: int) -> NodeRecord:
    return make_node(
        node_id, cpus=4, cpu_load=cpu_load, sysload=cpu_load, rooms=rooms, clients=clients
    )


@pytest.mark.parametrize(
    ("sort_by", "nodes", "expected", "not_expected"),
    [
        pytest.param(
            "cpuload",
            [lk_node("node1", 0.8, 5, 10), lk_node("node2", 0.3, 2, 5),
             lk_node("node3", 0.6, 3, 8), lk_node("node4", 0.9, 6, 12)],
            None, "node4", id="cpuload",
        ),
        pytest.param(
            "rooms",
            [lk_node("node1", 0.5, 8, 15), lk_node("node2", 0.4, 2, 5),
             lk_node("node3", 0.6, 12, 20)],
            None, "node3", id="rooms",
        ),
        pytest.param(
            "clients",
            [lk_node("node1", 0.5, 3, 25), lk_node("node2", 0.4, 2, 5),
             lk_node("node3", 0.6, 4, 30)],
            None, "node3", id="clients",
        ),
        pytest.param("cpuload", [lk_node("node1", 0.5, 3, 10)], "node1", None, id="single"),
        pytest.param(
            "cpuload",
            [lk_node("node1", 0.8, 5, 15), lk_node("node2", 0.3, 2, 5)],
            "node2", "node1", id="two",
        ),
    ],
)  # fmt: skip
def test_twochoice(
    sort_by: str, nodes: list[NodeRecord], expected: str | None, not_expected: str | None
) -> None:
    sel = make_selector("any", sort_by, "twochoice")
    for seed in range(100):
        chosen = pick(sel, nodes, seed)
        assert chosen in nodes
        if expected is not None:
            assert chosen.id == expected
        if not_expected is not None:
            assert chosen.id != not_expected


def test_twochoice_favours_low_load() -> None:
    sel = make_selector("any", "cpuload", "twochoice")
    nodes = [
        lk_node("node1", 0.95, 10, 20),
        lk_node("node2", 0.1, 1, 2),
        lk_node("node3", 0.5, 9, 18),
        lk_node("node4", 0.85, 8, 16),
    ]
    rng = random.Random(1234)
    chosen = [sel.select(nodes, now=NOW, rng=rng).id for _ in range(1000)]
    # node2 is in half of the 6 possible pairs and wins each: about 50%, not random's 25%.
    assert chosen.count("node2") / len(chosen) > 0.4
    assert chosen.count("node1") == 0


def test_twochoice_is_not_lowest() -> None:
    # With many nodes, twochoice must spread rooms beyond the single least-loaded node.
    nodes = [make_node(str(i), rooms=i) for i in range(8)]
    assert len(picks(make_selector(sort_by="rooms", algorithm="twochoice"), nodes)) > 3
    assert picks(make_selector(sort_by="rooms", algorithm="lowest"), nodes) == {"0"}


def test_twochoice_compares_exactly_two() -> None:
    # Three nodes: the three possible pairs make the least loaded win 2/3 of the time and
    # the middle one 1/3; comparing more than two (or all) would never pick the middle one.
    nodes = [make_node("least", rooms=0), make_node("middle", rooms=1), make_node("most", rooms=2)]
    sel = make_selector(sort_by="rooms", algorithm="twochoice")
    counts = {"least": 0, "middle": 0, "most": 0}
    for seed in range(900):
        counts[pick(sel, nodes, seed).id] += 1
    assert counts["most"] == 0
    assert 200 < counts["middle"] < 400, counts


# -- region-aware (LiveKit regionaware_test.go) ---------------------------------------------


def region_node(region: str, available: bool) -> NodeRecord:
    # LiveKit's "available" here means under the 0.5 sysload limit.
    return make_node(region=region, sysload=0.4 if available else 1.0)


def region_selector(current: str, sysload_limit: float = 0.5) -> NodeSelector:
    return make_selector(
        "regionaware", regions=REGIONS, current_region=current, sysload_limit=sysload_limit
    )


def test_region_works_without_region_config() -> None:
    node = region_node("", False)
    sel = make_selector("regionaware", current_region="us-east")
    assert pick(sel, [node]) is node


def test_region_picks_available_nodes_in_same_region() -> None:
    expected = region_node("us-east", True)
    nodes = [
        region_node("seattle", True),
        region_node("us-west", True),
        expected,
        region_node("us-east", False),
    ]
    for seed in range(20):
        assert pick(region_selector("us-east"), nodes, seed) is expected


def test_region_picks_same_region_when_current_node_is_first() -> None:
    expected = region_node("us-east", True)
    nodes = [
        expected,
        region_node("seattle", True),
        region_node("us-west", True),
        region_node("us-east", False),
    ]
    for seed in range(20):
        assert pick(region_selector("us-east"), nodes, seed) is expected


def test_region_picks_closest_node_in_a_different_region() -> None:
    expected = region_node("us-west", True)
    nodes = [region_node("seattle", False), expected, region_node("us-east", True)]
    for seed in range(20):
        assert pick(region_selector("seattle"), nodes, seed) is expected


def test_region_handles_multiple_nodes_in_same_region() -> None:
    expected = region_node("us-west", True)
    nodes = [
        region_node("seattle", False),
        region_node("us-east", True),
        region_node("us-east", True),
        expected,
        expected,
    ]
    for seed in range(20):
        assert pick(region_selector("seattle"), nodes, seed) is expected


def test_region_functions_when_current_region_is_full() -> None:
    node = region_node("us-west", True)
    sel = make_selector("regionaware", regions=REGIONS, current_region="us-east")
    assert pick(sel, [node]) is node


def test_region_spreads_within_the_nearest_region() -> None:
    west = [make_node(f"w{i}", region="us-west") for i in range(3)]
    nodes = [make_node("east", region="us-east"), *west]
    assert picks(region_selector("seattle"), nodes) == {"w0", "w1", "w2"}


def test_region_all_overloaded_still_prefers_nearest() -> None:
    # Every node over the limit: the load filter keeps them all, then nearest region wins.
    east = region_node("us-east", False)
    nodes = [region_node("us-west", False), east, region_node("seattle", False)]
    assert picks(region_selector("us-east"), nodes) == {east.id}


def test_region_unlisted_regions_are_infinitely_far() -> None:
    east = make_node("east", region="us-east")
    unlisted = [make_node("mars", region="mars"), make_node("blank", region="")]
    assert picks(region_selector("seattle"), [*unlisted, east]) == {"east"}
    # Only unlisted regions left: any of them will do.
    assert picks(region_selector("seattle"), unlisted) == {"mars", "blank"}


def test_region_sorts_within_the_nearest_region() -> None:
    sel = make_selector(
        "regionaware", "rooms", regions=REGIONS, current_region="us-east", sysload_limit=0.5
    )
    nodes = [
        make_node("west-idle", region="us-west", rooms=0),
        make_node("east-busy", region="us-east", rooms=9),
        make_node("east-idle", region="us-east", rooms=1),
    ]
    assert picks(sel, nodes) == {"east-idle"}


def test_regions_at_the_same_place_are_equally_near() -> None:
    twin = RegionConfig(name="us-east-2", lat=EAST.lat, lon=EAST.lon)
    sel = make_selector("regionaware", regions=[*REGIONS, twin], current_region="us-east")
    nodes = [make_node("a", region="us-east-2"), make_node("b", region="us-east")]
    assert picks(sel, nodes) == {"a", "b"}


def test_region_distances() -> None:
    sel = region_selector("seattle")
    d = sel.region_distances
    assert d["seattle"] == 0.0
    assert d["seattle"] < d["us-west"] < d["us-east"]


def test_distance_between() -> None:
    assert distance_between(10, 20, 10, 20) == 0.0
    # New York - Los Angeles, about 3940 km on a 6378.1 km sphere.
    ny_la = distance_between(40.7128, -74.0060, 34.0522, -118.2437)
    assert 3_900_000 < ny_la < 3_980_000
    assert ny_la == pytest.approx(distance_between(34.0522, -118.2437, 40.7128, -74.0060))
    assert distance_between(0, 0, 0, 180) == pytest.approx(math.pi * EARTH_RADIUS_METERS)
    assert distance_between(90, 0, -90, 0) == pytest.approx(math.pi * EARTH_RADIUS_METERS)


def test_candidates_explains_the_narrowing() -> None:
    sel = region_selector("us-east")
    east_ok = region_node("us-east", True)
    nodes = [region_node("us-west", True), east_ok, region_node("us-east", False)]
    assert sel.candidates(nodes, now=NOW) == [east_ok]


# -- properties -----------------------------------------------------------------------------

REGION_NAMES = ["us-west", "us-east", "seattle", "mars", ""]


@st.composite
def nodes_strategy(draw: st.DrawFn, min_size: int = 0) -> list[NodeRecord]:
    count = draw(st.integers(min_size, 8))
    out = []
    for i in range(count):
        out.append(
            make_node(
                f"ND_{i}",
                region=draw(st.sampled_from(REGION_NAMES)),
                state=draw(st.sampled_from(list(NodeState))),
                age=draw(st.sampled_from([0.0, 1.0, 4.9, 5.0, 5.1, 30.0])),
                cpu_load=draw(st.floats(0, 1.2)),
                sysload=draw(st.floats(0, 3)),
                rooms=draw(st.integers(0, 20)),
                clients=draw(st.integers(0, 100)),
                tracks_in=draw(st.integers(0, 60)),
                tracks_out=draw(st.integers(0, 60)),
                bytes_in=draw(st.floats(0, 1e6)),
                bytes_out=draw(st.floats(0, 1e6)),
            )
        )
    return out


selectors = st.builds(
    make_selector,
    kind=st.sampled_from(KINDS),
    sort_by=st.sampled_from(SORT_BY_OPTIONS),
    algorithm=st.sampled_from(ALGORITHMS),
    cpu_load_limit=st.floats(0, 1.2),
    sysload_limit=st.floats(0, 3),
    regions=st.just(REGIONS),
    current_region=st.sampled_from(["us-west", "us-east", "seattle"]),
    num_tracks=st.sampled_from([0, 30, 60, 100]),
    bytes_per_sec=st.sampled_from([0.0, 5e5, 1.5e6]),
)


@settings(max_examples=400)
@given(sel=selectors, nodes=nodes_strategy(), seed=st.integers(0, 2**32))
def test_property_selected_node_is_eligible(
    sel: NodeSelector, nodes: list[NodeRecord], seed: int
) -> None:
    available = [n for n in nodes if n.is_available(NOW)]
    eligible = [n for n in available if not limits_reached(sel.limits, n.stats)]
    try:
        chosen = pick(sel, nodes, seed)
    except NoAvailableNodesError as exc:
        assert not eligible
        if available:
            assert "at their limits" in str(exc)
        return
    assert any(chosen is n for n in nodes)
    assert chosen.state is NodeState.SERVING
    assert NOW - chosen.stats.updated_at <= 5.0
    assert chosen.is_available(NOW)
    assert not limits_reached(sel.limits, chosen.stats)


def _nearest_known_distance(sel: NodeSelector, pool: list[NodeRecord]) -> float | None:
    known = [sel.region_distances[n.region] for n in pool if n.region in sel.region_distances]
    return min(known) if known else None


@settings(max_examples=300)
@given(
    current=st.sampled_from(["us-west", "us-east", "seattle"]),
    sort_by=st.sampled_from(SORT_BY_OPTIONS),
    algorithm=st.sampled_from(ALGORITHMS),
    nodes=nodes_strategy(min_size=1),
    seed=st.integers(0, 2**32),
)
def test_property_region_aware_picks_nearest_region_with_available_nodes(
    current: str, sort_by: str, algorithm: str, nodes: list[NodeRecord], seed: int
) -> None:
    # No load limit: the nearest region holding an available node is where the room goes.
    sel = make_selector(
        "regionaware", sort_by, algorithm, regions=REGIONS, current_region=current,
        sysload_limit=math.inf,
    )  # fmt: skip
    available = [n for n in nodes if n.is_available(NOW)]
    if not available:
        with pytest.raises(NoAvailableNodesError):
            pick(sel, nodes, seed)
        return
    chosen = pick(sel, nodes, seed)
    nearest = _nearest_known_distance(sel, available)
    if nearest is None:
        assert chosen.region not in sel.region_distances
    else:
        assert sel.region_distances[chosen.region] == nearest


@settings(max_examples=300)
@given(
    current=st.sampled_from(["us-west", "us-east", "seattle"]),
    sysload_limit=st.floats(0, 3),
    nodes=nodes_strategy(min_size=1),
    seed=st.integers(0, 2**32),
)
def test_property_region_aware_with_load_filter(
    current: str, sysload_limit: float, nodes: list[NodeRecord], seed: int
) -> None:
    # With a load limit: nearest region among the under-limit nodes (all nodes if none is).
    sel = region_selector(current, sysload_limit)
    available = [n for n in nodes if n.is_available(NOW)]
    if not available:
        return
    chosen = pick(sel, nodes, seed)
    under = [n for n in available if n.stats.sysload < sysload_limit]
    pool = under or available
    assert chosen in pool
    nearest = _nearest_known_distance(sel, pool)
    if nearest is not None:
        assert sel.region_distances[chosen.region] == nearest


_STAT_FOR_SORT = {
    "sysload": "sysload",
    "cpuload": "cpu_load",
    "rooms": "rooms",
    "clients": "clients",
    "tracks": "tracks_out",
    "bytespersec": "bytes_out",
}


@settings(max_examples=300)
@given(
    sort_by=st.sampled_from(sorted(_STAT_FOR_SORT)),
    loads=st.lists(st.integers(0, 10_000), min_size=3, max_size=10, unique=True),
    seed=st.integers(0, 2**32),
)
def test_property_twochoice_never_picks_the_highest(
    sort_by: str, loads: list[int], seed: int
) -> None:
    field = _STAT_FOR_SORT[sort_by]
    nodes = [make_node(f"ND_{i}", **_stats({field: load})) for i, load in enumerate(loads)]
    highest = nodes[loads.index(max(loads))]
    chosen = pick(make_selector("any", sort_by, "twochoice"), nodes, seed)
    assert chosen is not highest
    assert any(chosen is n for n in nodes)


@settings(max_examples=200)
@given(
    sort_by=st.sampled_from(sorted(_STAT_FOR_SORT)),
    loads=st.lists(st.integers(0, 10_000), min_size=1, max_size=10),
    seed=st.integers(0, 2**32),
)
def test_property_lowest_picks_a_minimum(sort_by: str, loads: list[int], seed: int) -> None:
    field = _STAT_FOR_SORT[sort_by]
    nodes = [make_node(f"ND_{i}", **_stats({field: load})) for i, load in enumerate(loads)]
    chosen = pick(make_selector("any", sort_by, "lowest"), nodes, seed)
    assert loads[nodes.index(chosen)] == min(loads)
