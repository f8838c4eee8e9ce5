"""Which participant updates go to a room's clients at once and which wait for the batch."""

from __future__ import annotations

import asyncio

from livekit.protocol import models

from trackyard.sfu.updates import ParticipantUpdates, chunks

JOINED = models.ParticipantInfo.JOINED
ACTIVE = models.ParticipantInfo.ACTIVE
DISCONNECTED = models.ParticipantInfo.DISCONNECTED


def info(
    identity: str,
    state: models.ParticipantInfo.State = JOINED,
    *,
    version: int = 1,
    sid: str = "",
    publisher: bool = False,
    metadata: str = "",
    joined_at_ms: int = 1000,
) -> models.ParticipantInfo:
    return models.ParticipantInfo(
        identity=identity,
        sid=sid or f"PA_{identity}",
        state=state,
        version=version,
        is_publisher=publisher,
        metadata=metadata,
        joined_at_ms=joined_at_ms,
    )


class Sent:
    def __init__(self) -> None:
        self.messages: list[list[tuple[str, str, int]]] = []
        self.arrived = asyncio.Event()

    def __call__(self, infos: list[models.ParticipantInfo]) -> None:
        self.messages.append([(i.identity, i.sid, i.state) for i in infos])
        self.arrived.set()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def updates(
    interval: float = 30.0, *, rate: float = 0, audience: int = 10, clock: Clock | None = None
) -> tuple[ParticipantUpdates, Sent]:
    """rate 0: every non-urgent update waits for the batch (LiveKit's way)."""
    sent = Sent()
    u = ParticipantUpdates(
        sent,
        lambda: audience,
        interval=interval,
        rate=rate,
        target_size=0,
        clock=clock or Clock(),
    )
    return u, sent


async def test_joins_and_leaves_of_subscribers_go_out_together_with_the_batch() -> None:
    u, sent = updates(interval=0.05)
    assert u.push(info("a")) is False
    assert u.push(info("b")) is False
    assert u.push(info("a", ACTIVE, version=2)) is False
    assert u.push(info("c")) is False
    assert u.push(info("c", DISCONNECTED, version=2)) is False
    assert sent.messages == []
    await asyncio.wait_for(sent.arrived.wait(), 5)
    # one message, the latest of each
    assert sent.messages == [
        [("a", "PA_a", ACTIVE), ("b", "PA_b", JOINED), ("c", "PA_c", DISCONNECTED)]
    ]
    u.close()


async def test_publishers_and_changes_others_must_see_go_out_at_once() -> None:
    u, sent = updates()
    u.push(info("a"))  # batched
    assert u.push(info("a", version=2, publisher=True)) is True  # published: at once
    assert sent.messages == [[("a", "PA_a", JOINED)]]
    assert u.push(info("a", version=3)) is True  # unpublished the last track: at once
    u.push(info("b"))
    assert u.push(info("b", version=2, metadata="m")) is True  # metadata: at once
    assert u.push(info("a", DISCONNECTED, version=4)) is False  # a subscriber's leave waits
    assert len(sent.messages) == 3
    u.flush()
    assert sent.messages[-1] == [("a", "PA_a", DISCONNECTED)]
    u.close()


async def test_an_older_view_is_dropped_and_a_new_session_follows_the_old_ones_end() -> None:
    u, sent = updates()
    u.push(info("a", ACTIVE, version=5))
    u.push(info("a", JOINED, version=4))  # late: dropped
    u.push(info("a", DISCONNECTED, version=6))
    assert sent.messages == []
    # the identity rejoins with a new session before the batch: the end of the old goes first
    assert u.push(info("a", sid="PA_a2", joined_at_ms=2000)) is True
    assert sent.messages == [[("a", "PA_a", DISCONNECTED), ("a", "PA_a2", JOINED)]]
    u.flush()
    assert len(sent.messages) == 1  # nothing was left waiting
    u.close()


async def test_interval_zero_sends_everything_at_once() -> None:
    u, sent = updates(interval=0)
    assert u.push(info("a"), info("b")) is True
    assert sent.messages == [[("a", "PA_a", JOINED), ("b", "PA_b", JOINED)]]


async def test_close_drops_the_batch() -> None:
    u, sent = updates(interval=0.01)
    u.push(info("a"))
    u.close()
    await asyncio.sleep(0.05)  # past the interval: the cancelled timer must not fire
    assert sent.messages == []


def test_chunks_keep_order_within_the_target_size() -> None:
    infos = [info(f"p{i}", metadata="x" * 100) for i in range(10)]
    size = infos[0].ByteSize()
    cut = chunks(infos, 3 * size)
    assert [len(c) for c in cut] == [3, 3, 3, 1]
    assert [i.identity for c in cut for i in c] == [i.identity for i in infos]
    assert chunks(infos, 0) == [infos]
    assert [len(c) for c in chunks(infos, 1)] == [1] * 10  # an info larger than the target


async def test_within_the_budget_nothing_waits_beyond_it_the_batch_does() -> None:
    clock = Clock()
    u, sent = updates(rate=25, audience=10, clock=clock)  # a message to 10 clients costs 10
    assert u.push(info("a")) is True  # 25 -> 15
    assert u.push(info("b")) is True  # 15 -> 5
    assert u.push(info("c")) is False  # 5 < 10: waits
    clock.now += 1.0  # the budget is back, but a batch waits: join it (order per identity)
    assert u.push(info("d")) is False
    assert u.push(info("e", publisher=True)) is True  # urgent: at once whatever the budget
    assert sent.messages == [
        [("a", "PA_a", JOINED)],
        [("b", "PA_b", JOINED)],
        [("e", "PA_e", JOINED)],
    ]
    u.flush()  # the batch spends too: 25 - 10 (e) - 10 (batch) = 5
    assert sent.messages[-1] == [("c", "PA_c", JOINED), ("d", "PA_d", JOINED)]
    assert u.push(info("f")) is False
    u.close()
    clock.now += 1.0
    assert u.push(info("g")) is True


async def test_a_sessions_end_and_the_next_session_in_one_push_keep_their_order() -> None:
    u, sent = updates()
    u.push(info("a", ACTIVE, version=2))  # waits
    new = info("a", sid="PA_a2", joined_at_ms=2000)
    assert u.push(info("a", DISCONNECTED, version=3), new) is True
    assert sent.messages == [[("a", "PA_a", DISCONNECTED), ("a", "PA_a2", JOINED)]]
    u.push(info("a", ACTIVE, version=2))  # a late view of the ended session: dropped
    u.flush()
    assert len(sent.messages) == 1
    u.close()


async def test_in_a_storm_a_batch_goes_once_the_budget_pays_for_it() -> None:
    u, sent = updates(interval=30.0, rate=1000, audience=100)  # a batch costs 0.1 s of budget
    for i in range(10):
        assert u.push(info(f"p{i}")) is True  # the saved-up second: 10 x 100 messages
    assert u.push(info("late")) is False
    sent.arrived.clear()
    await asyncio.wait_for(sent.arrived.wait(), 5)  # long before the 30 s interval
    assert sent.messages[-1] == [("late", "PA_late", JOINED)]
    u.close()
