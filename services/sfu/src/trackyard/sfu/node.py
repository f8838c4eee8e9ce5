"""The SFU node: hosts rooms (or its part of rooms that span nodes), consumes its bus
channel, reports itself to the store."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Coroutine, Sequence
from typing import Any

import structlog
from aiortc import RTCPeerConnection
from livekit.protocol import models
from livekit.protocol import room as room_pb
from livekit.protocol.agent_dispatch import RoomAgentDispatch
from prometheus_client import REGISTRY
from pydantic import ValidationError

from trackyard.core import ids, keys, messages
from trackyard.core.bus import Bus, Envelope, Subscription, publish_patiently
from trackyard.core.config import Config
from trackyard.core.liveness import StoreGeneration, stale_nodes
from trackyard.core.node import NodeRecord, NodeState, NodeStats
from trackyard.core.noderpc import ChannelRpcClient, reply
from trackyard.core.nodestats import StatsCollector, TrafficCounters
from trackyard.core.refusal import Code, Refusal
from trackyard.core.store import Store
from trackyard.core.webhook import WebhookNotifier
from trackyard.sfu import fanout, portrange, roomapi, rtphooks
from trackyard.sfu.agents import dispatcher_for, room_agents_from_config
from trackyard.sfu.metrics import NodeCollector
from trackyard.sfu.participant import Participant, ParticipantServices
from trackyard.sfu.room import Room, RoomServices
from trackyard.sfu.rtpstats import TrafficCounters as MediaCounters
from trackyard.sfu.sessions import SessionReaper

log = structlog.get_logger(__name__)

ADMIT_TIMEOUT = 2.0  # seconds a part waits for the home to admit a join
GC_PAUSE_WARNING = 0.05  # seconds: a garbage-collector pass this long stops all media
GC_FREEZE_EVERY = 1.0  # seconds between freezing the objects that survived so far
GC_FULL_AFTER = 60.0  # seconds at least between two deliberate full passes
GC_FULL_GROWTH = 0.25  # resident memory grown by this share since the last full pass: one is due
GC_GROWTH_AFTER = 600.0  # ... but not sooner than this after the last one


class GcPauses:
    """Logs the garbage collector's long passes: the process forwards nothing meanwhile, so
    every subscriber sees them as latency."""

    def __init__(self, logger: Any) -> None:
        self._log = logger
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._started = now
        elif now - self._started >= GC_PAUSE_WARNING:
            self._log.warning(
                "long garbage-collector pause",
                ms=round((now - self._started) * 1000, 1),
                generation=info["generation"],
                collected=info["collected"],
            )


def resident_pages() -> int:
    """This process's resident memory in pages (0 where ``/proc`` has no answer)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0


class GcPolicy:
    """Keeps the garbage collector's passes short on a process that forwards media.

    A full pass (generation 2) walks every object the collector tracks, and forwards nothing
    meanwhile: with a hundred peer connections that is 200-300k objects and 80-260 ms (two
    shared cores), and CPython starts one whenever a quarter more objects have survived,
    every 1-3 s while participants join and after (measured by benchmarks/span at N=256).
    So every ``freeze_every`` seconds the objects that survived so far are frozen
    (``gc.freeze``: left out of every pass), and the passes see only the recent ones.

    Frozen objects are still freed when their reference count drops; only cycles that became
    garbage after being frozen (a departed participant's peer connection) wait for a
    deliberate full pass: due after a departure (never sooner than ``full_after`` after the
    last one, so the pause comes at most once a minute instead of every few seconds), or once
    the process's resident memory grew by ``full_growth`` (never sooner than
    ``growth_after``). Growth alone is mostly the objects of participants who are still
    there, so a join storm must not buy a 200 ms pass a minute later (N=384 over two
    workers: both passed at once, 192-195 ms each, collecting under 900 objects). Growth is
    read from ``/proc/self/statm``: counting the frozen objects instead walks every one of
    them (40 ms at N=384, a pause of its own)."""

    def __init__(
        self,
        *,
        freeze_every: float = GC_FREEZE_EVERY,
        full_after: float = GC_FULL_AFTER,
        full_growth: float = GC_FULL_GROWTH,
        growth_after: float = GC_GROWTH_AFTER,
    ) -> None:
        self.freeze_every = freeze_every
        self._full_after = full_after
        self._full_growth = full_growth
        self._growth_after = growth_after
        self._last_full = time.monotonic()
        self._resident_after_full = resident_pages()
        self._departed = False

    def departed(self) -> None:
        """Something long-lived was let go (a participant, a room): a full pass is due."""
        self._departed = True

    def tick(self) -> None:
        now = time.monotonic()
        since = now - self._last_full
        if (since >= self._full_after and self._departed) or (
            since >= self._growth_after and self._grown()
        ):
            self._departed = False
            self._last_full = now
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self._resident_after_full = resident_pages()
            return
        gc.freeze()

    def _grown(self) -> bool:
        before = self._resident_after_full
        return before > 0 and resident_pages() > before * (1 + self._full_growth)

    def stop(self) -> None:
        """Give the frozen objects back to the collector."""
        gc.unfreeze()


class SfuNode:
    def __init__(
        self,
        config: Config,
        store: Store,
        bus: Bus,
        *,
        node_id: str | None = None,
        address: str = "",
    ) -> None:
        self.config = config
        self.store = store
        self.bus = bus
        self.node_id = node_id or ids.new_id(ids.NODE)
        self.address = address
        self.state = NodeState.SERVING
        self.rooms: dict[str, Room] = {}
        self.sessions: dict[str, Participant] = {}  # session id -> participant (room events)
        self.started_at = time.time()
        self.draining = asyncio.Event()  # set on the first drain signal
        self.drained = asyncio.Event()  # set when draining and the last participant left
        self.drain_deadline_at: float | None = None  # epoch seconds, while a deadline runs
        self._deadline_task: asyncio.Task[Any] | None = None
        self.collector = StatsCollector()
        self.counters = MediaCounters()  # media plane totals; the stats loop makes rates
        self.relay_counters = MediaCounters()  # tracks crossing to and from other nodes
        self._collector: NodeCollector | None = None
        self.last_stats = NodeStats()
        self._room_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sub: Subscription | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._check_task: asyncio.Task[None] | None = None
        self.log = log.bind(node=self.node_id)
        self._gc_pauses = GcPauses(self.log)
        self._gc = GcPolicy()
        self._gc_task: asyncio.Task[None] | None = None
        self.webhooks = WebhookNotifier.from_config(config)  # None without webhook.urls
        self._announced: set[str] = set()  # participant sids sent as participant_joined
        self.generation = StoreGeneration(config.node.dead_after)
        self.reaper = SessionReaper(self, self.generation)
        self._room_services = RoomServices(
            config=config,
            node_id=self.node_id,
            store=store,
            spawn=self.spawn,
            participants=ParticipantServices(
                config=config,
                counters=self.counters,
                spawn=self.spawn,
                signal_sink=self._send_signal,
                make_peer_connection=self.make_peer_connection,
                liveness=self.reaper,
            ),
            bus=bus,
            relay_counters=self.relay_counters,
            admit=self._admit_at_home,
        )
        self.rpc = ChannelRpcClient(bus, self.node_id, purpose="rooms")  # to other nodes

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        rtphooks.check_aiortc_internals()  # fail at start-up, not on the first packet
        if self.webhooks is not None:
            self.webhooks.start()
        self._collector = NodeCollector(self.counters, self)
        REGISTRY.register(self._collector)
        self._sub = self.bus.subscribe(keys.node_channel(self.node_id))
        self._consumer = asyncio.create_task(self._consume(self._sub), name="node-consumer")
        await self.report()
        self._stats_task = asyncio.create_task(self._report_loop(), name="node-stats")
        self._check_task = asyncio.create_task(self._check_loop(), name="node-checks")
        gc.callbacks.append(self._gc_pauses)
        self._gc_task = asyncio.create_task(self._gc_loop(), name="node-gc")
        self.log.info("sfu node started", region=self.config.region, fan_out=fanout.describe())

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._gc_pauses)
        for room in list(self.rooms.values()):
            await room.close(models.DisconnectReason.SERVER_SHUTDOWN)
        for task in (self._gc_task, self._check_task, self._stats_task, self._consumer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._sub is not None:
            await self._sub.close()
        await dispatcher_for(self).rpc.close()
        await self.rpc.close()
        with contextlib.suppress(Exception):
            await self.store.delete_node(self.node_id)
            await self.bus.delete(keys.node_channel(self.node_id))
        for task in list(self._tasks):
            task.cancel()
        if self._collector is not None:
            REGISTRY.unregister(self._collector)
            self._collector = None
        if self.webhooks is not None:
            await self.webhooks.stop()  # delivers what the closing rooms raised, bounded
        self._gc.stop()
        self.log.info("sfu node stopped")

    async def drain(self, deadline: float | None = None) -> None:
        """Take no new rooms; keep the active ones; ``drained`` fires when the last one empties.

        With ``node.drain_deadline`` set, participants still here at the deadline are sent to
        reconnect (their rooms are released, so they are placed anew on another node).
        ``deadline`` (seconds from now; 0 = none) overrides it (the drain API); on a node
        already draining it replaces the running deadline.
        """
        if self.state is NodeState.SHUTTING_DOWN:
            if deadline is not None:
                self._set_drain_deadline(deadline)
                await self.report(fresh=False)
            return
        self.state = NodeState.SHUTTING_DOWN
        self.draining.set()
        seconds = self.config.node.drain_deadline if deadline is None else deadline
        self.log.info(
            "draining", rooms=len(self.rooms), participants=len(self.sessions), deadline=seconds
        )
        self._set_drain_deadline(seconds)
        await self.report()
        self._check_drained()

    def _set_drain_deadline(self, seconds: float) -> None:
        if self._deadline_task is not None:
            self._deadline_task.cancel()
            self._deadline_task = None
        self.drain_deadline_at = time.time() + seconds if seconds else None
        if seconds:
            self._deadline_task = self.spawn(self._drain_deadline(seconds))

    async def _drain_deadline(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.drained.wait(), seconds)
        except TimeoutError:
            self.log.warning("drain deadline reached; moving participants", seconds=seconds)
            for room in list(self.rooms.values()):
                await room.evict_all("node is shutting down")

    def _check_drained(self) -> None:
        # relay sessions (other nodes pulling tracks) end with the rooms' last participants
        clients = any(not p.relay_node for p in self.sessions.values())
        if self.state is NodeState.SHUTTING_DOWN and not clients:
            self.drained.set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run in the background, keeping a reference and logging failures."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("background task failed", exc_info=task.exception())

    async def _send_signal(self, env: Envelope) -> bool:
        """A participant's response to the edge holding its session (patient: a Redis
        blip must not lose it)."""
        channel = keys.session_channel(env.session)
        return await publish_patiently(
            self.bus, channel, env, within=self.config.signal.ping_timeout
        )

    async def _admit_at_home(self, home: str, room: str, identity: str) -> None:
        """Ask a room's home to admit a join here (it counts the room on every node)."""
        request = room_pb.RoomParticipantIdentity(room=room, identity=identity)
        await self.rpc.call_channel(
            keys.node_channel(home),
            "AdmitParticipant",
            request.SerializeToString(),
            timeout=ADMIT_TIMEOUT,
            callee=home,
        )

    def make_peer_connection(self) -> RTCPeerConnection:
        rtc_cfg = self.config.rtc
        return portrange.make_peer_connection(
            (rtc_cfg.port_range_start, rtc_cfg.port_range_end),
            rtc_cfg.node_ip,
            list(rtc_cfg.stun_servers),
            turn_servers=rtc_cfg.turn_servers if self.config.node.use_turn_servers else (),
            turn_name=self.node_id,
        )

    # -- stats ------------------------------------------------------------------------------

    def record(self, *, fresh: bool = True) -> NodeRecord:
        """This node's record; ``fresh=False`` reuses the last figures (rates keep their window)."""
        return NodeRecord(
            id=self.node_id,
            address=self.address,
            region=self.config.region,
            host=self.config.node.host_id,
            state=self.state,
            drain_deadline_at=self.drain_deadline_at,
            started_at=self.started_at,
            stats=self.stats()
            if fresh
            else self.last_stats.model_copy(update={"updated_at": time.time()}),
        )

    def stats(self) -> NodeStats:
        """Fresh figures (rates cover the time since the previous call)."""
        tracks_in = sum(len(p.tracks) for p in self.sessions.values())
        tracks_out = sum(p.subscribed_count() for p in self.sessions.values())
        clients = sum(1 for p in self.sessions.values() if not p.relay_node)
        c = self.counters
        counters = TrafficCounters(c.bytes_in, c.bytes_out, c.packets_in, c.packets_out)
        self.last_stats = self.collector.collect(
            counters,
            rooms=len(self.rooms),
            clients=clients,
            tracks_in=tracks_in,
            tracks_out=tracks_out,
        )
        return self.last_stats

    async def report(self, *, fresh: bool = True) -> None:
        interval = self.config.node.stats_update_interval
        try:
            await self.store.put_node(self.record(fresh=fresh), ttl=max(3 * interval, 5.0))
        except Exception as exc:
            self.log.warning("cannot write node record", error=str(exc))

    async def _report_loop(self) -> None:
        """The heartbeat: the record rewritten every ``heartbeat_interval`` (fresh figures
        every ``stats_update_interval``), and again at once when the store's generation
        changed (Redis restarted empty). Nothing else waits in this loop: peers judge this
        node dead when its heartbeat lags theirs by ``dead_after``, so a slow round of
        checks (``_check_loop``) must not hold the next write back."""
        cfg = self.config.node
        next_stats = time.monotonic() + cfg.stats_update_interval
        while True:
            await asyncio.sleep(cfg.heartbeat_interval)
            fresh = time.monotonic() >= next_stats
            if fresh:
                next_stats = time.monotonic() + cfg.stats_update_interval
            await self.report(fresh=fresh)
            before = self.generation.value
            await self.generation.observe(self.store)
            if self.generation.value != before:
                await self.report(fresh=False)  # the store forgot us too: at once, again

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self._gc.freeze_every)
            self._gc.tick()

    async def _check_loop(self) -> None:
        """Every ``heartbeat_interval``: placements re-asserted every
        ``stats_update_interval`` and at once when the store's generation changed; the
        rooms' other nodes and the signal edges checked for deaths."""
        cfg = self.config.node
        next_placements = time.monotonic() + cfg.stats_update_interval
        checked = self.generation.value
        while True:
            await asyncio.sleep(cfg.heartbeat_interval)
            forgot = self.generation.value != checked
            checked = self.generation.value
            if forgot or time.monotonic() >= next_placements:
                next_placements = time.monotonic() + cfg.stats_update_interval
                await self.check_placements()
            try:
                await self.check_peers()
            except Exception as exc:
                self.log.debug("cannot check room parts", error=str(exc))
            try:
                await self.reaper.check_edges()
            except Exception:
                self.log.exception("cannot check signal edges")

    async def check_placements(self) -> None:
        """Re-assert our rooms in the store; follow or give up rooms another node took over.

        A store that lost its data (Redis restarted empty) gets our placements back, so a
        newcomer to an active room still lands here rather than on a duplicate room. The
        store is the authority: when it names another node as the home, a room that may span
        nodes becomes a part of that node's room (the home's state wins); a pinned room
        (``span.enabled: false``) gives our copy up even if its epoch is not newer than ours
        (epochs restart after such a data loss), so it never lives on two nodes.
        """
        for room in list(self.rooms.values()):
            try:
                current = await self.store.get_placement(room.name)
                if current is None and room.is_home:
                    current = await self.store.claim_room(room.name, self.node_id)
                    if current.node_id == self.node_id:
                        room.epoch = current.epoch
                        await self.store.put_room(room.info())
                        await self._restore_participants(room)
                        room.log.info("placement re-asserted", epoch=current.epoch)
                elif not room.is_home:
                    # one read tells which of ours the store lost (it restarted empty, or a
                    # seat was cleared): rewriting all of them every round took a part with
                    # a hundred participants over a second of store round trips
                    seats = await self.store.list_seats(room.name)
                    await self._restore_participants(room, seated=seats)
                    await self._discover_peers(room, seats=seats)
            except Exception as exc:
                self.log.debug("cannot check placement", room=room.name, error=str(exc))
                return
            if current is not None and current.node_id == self.node_id and not room.is_home:
                room.become_home(current.epoch)  # the router made this part the home
                continue
            if current is None or current.node_id in (self.node_id, room.home_node):
                continue
            if self.config.span.enabled:
                room.log.info("room's home is another node; following it", home=current.node_id)
                room.home_node = current.node_id
                room.open_to_peers({current.node_id})
                continue
            room.log.warning(
                "room was placed on another node; closing our copy",
                other=current.node_id,
                epoch=current.epoch,
                our_epoch=room.epoch,
            )
            await room.evict_all("room moved to another node")

    async def _adopt_stored(self, room: Room) -> bool:
        """A home opening a room that lives on other nodes (its old home died or left):
        the room keeps its sid, metadata and settings from the store. True if it did."""
        seats = await self.store.list_seats(room.name)
        if not any(n != self.node_id for n in seats.values()):
            return False
        stored = await self.store.get_room(room.name)
        if stored is None:
            return False
        room.adopt(stored)
        room.log.info("room taken over from the store", sid=stored.sid)
        return True

    async def _discover_peers(
        self, room: Room, *, seed: bool = False, seats: dict[str, str] | None = None
    ) -> None:
        """The room's other nodes (its home and the nodes its participants are seated on);
        ``seed``: a new part also takes their participants from the store. ``seats``: the
        room's seats if just read."""
        if seats is None:
            seats = await self.store.list_seats(room.name)
        nodes = (set(seats.values()) | {room.home_node}) - {self.node_id}
        dead = await self._dead(nodes)
        if seed:  # seats on dead nodes are participants about to rejoin: not in the room
            seats = {who: n for who, n in seats.items() if n not in dead}
            room.seed_remotes(await self.store.list_participants(room.name), seats)
        room.open_to_peers(nodes - dead)

    async def _dead(self, nodes: set[str]) -> set[str]:
        """Which of ``nodes`` are dead (missed heartbeats, as the router judges), or none
        while the store is settling (it may have forgotten live nodes)."""
        if not nodes or self.generation.settling():
            return set()
        ages = await self.store.node_heartbeats([*nodes, self.node_id])
        return stale_nodes(ages, self.config.node.dead_after) | (nodes - ages.keys())

    async def check_peers(self) -> None:
        """Rooms' other nodes that died (heartbeats, as the router judges): their
        participants are gone from our rooms, and a room whose home died gets a new one."""
        peers = {n for room in self.rooms.values() for n in room.peers.nodes}
        dead = await self._dead(peers)
        for room in list(self.rooms.values()):
            for node in room.peers.nodes & dead:
                room.log.warning("room part's node is dead", peer=node)
                room.peer_gone(node, "node dead")

    async def _restore_participants(
        self, room: Room, *, seated: dict[str, str] | None = None
    ) -> None:
        """Put the room's participants back into a store that forgot them (``seated``: the
        room's seats as just read; only ours missing there). One that leaves while we write
        is deleted again, so a late put never outlives its leave."""
        for p in list(room.participants.values()):
            if room.participants.get(p.identity) is not p:
                continue
            if seated is not None and seated.get(p.identity) == self.node_id:
                continue
            await self.store.put_participant(room.name, p.info())
            await self.store.put_seat(room.name, p.identity, self.node_id)
            if room.participants.get(p.identity) is not p:
                await self.store.delete_participant(room.name, p.identity)
                await self.store.delete_seat(room.name, p.identity, self.node_id)

    # -- rooms ------------------------------------------------------------------------------

    def room_lock(self, name: str) -> asyncio.Lock:
        return self._room_locks.setdefault(name, asyncio.Lock())

    async def ensure_room(
        self,
        name: str,
        *,
        create: bool,
        empty_timeout: int = 0,
        departure_timeout: int = 0,
        max_participants: int = 0,
        metadata: str = "",
        agents: Sequence[RoomAgentDispatch] = (),
        home_node: str = "",
    ) -> Room | None:
        """The room (or our part of it, when ``home_node`` names another node)."""
        room = self.rooms.get(name)
        if room is not None and not room.closed:
            return room
        if not create:
            return None
        cfg = self.config.room
        placement = await self.store.get_placement(name)
        home = home_node or (placement.node_id if placement else "") or self.node_id
        room = Room(
            name,
            self._room_services,
            self,
            empty_timeout=empty_timeout or cfg.empty_timeout,
            departure_timeout=departure_timeout or cfg.departure_timeout,
            max_participants=max_participants or cfg.max_participants,
            metadata=metadata,
            epoch=placement.epoch if placement else 0,
            home_node=home if self.config.span.enabled else self.node_id,
        )
        self.rooms[name] = room
        if not room.is_home:
            stored = await self.store.get_room(name)
            if stored is not None:  # until the home's own word arrives
                room.adopt(stored)
            await self._discover_peers(room, seed=True)
            room.log.info("room part opened", home=room.home_node)
            return room
        taken_over = self.config.span.enabled and await self._adopt_stored(room)
        await self.store.put_room(room.info())
        room.log.info("room created")
        if self.config.span.enabled:
            await self._discover_peers(room, seed=True)
        if taken_over:
            return room  # it started before, elsewhere: no second room_started
        if self.webhooks is not None:
            self.webhooks.notify("room_started", room=room.info())
        dispatcher_for(self).room_started(room, agents)
        return room

    # -- what its rooms report (RoomListener) ------------------------------------------------
    # Webhooks are LiveKit's events, each raised on the node hosting the room: once.

    async def room_closed(self, room: Room) -> None:
        self._gc.departed()
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self._room_locks.pop(room.name, None)
        if not room.is_home:
            return  # a part: the room lives on with its home
        others = room.handed_over  # parts live on: one of them takes the home role
        if not others:
            if self.webhooks is not None:
                self.webhooks.notify("room_finished", room=room.info())
            await dispatcher_for(self).room_closed(room)
        try:
            if not others:
                await self.store.delete_room(room.name)
            await self.store.release_room(room.name, self.node_id)
        except Exception as exc:
            room.log.warning("cannot release room in store", error=str(exc))

    def home_lost(self, room: Room) -> None:
        self.spawn(self._take_home(room))

    async def _take_home(self, room: Room) -> None:
        """The home left or died: claim the room (atomic; one part wins, with a newer
        epoch); the others follow the winner."""
        old_home = room.home_node
        async with self.room_lock(room.name):
            if room.closed or room.home_node != old_home:
                return
            current = await self.store.get_placement(room.name)
            if current is not None and current.node_id == self.node_id:
                room.become_home(current.epoch)
                return
            if current is not None and current.node_id != old_home:
                room.home_node = current.node_id
                room.open_to_peers({current.node_id})
                return
            placement = await self.store.claim_room(room.name, self.node_id, replace=current)
            if placement.node_id == self.node_id:
                room.become_home(placement.epoch)
                await self.store.put_room(room.info())
            else:
                room.home_node = placement.node_id
                room.open_to_peers({placement.node_id})

    def participant_added(self, room: Room, participant: Participant) -> None:
        self.sessions[participant.session_id] = participant

    def participant_joined(self, room: Room, participant: Participant) -> None:
        dispatcher_for(self).participant_joined(room, participant)

    def participant_active(self, room: Room, participant: Participant) -> None:
        """LiveKit's participant_joined: sent when the participant is ACTIVE (connected)."""
        if self.webhooks is not None:
            self._announced.add(participant.sid)
            self.webhooks.notify(
                "participant_joined", room=room.info(), participant=participant.info()
            )

    def participant_removed(self, room: Room, participant: Participant) -> None:
        if self.sessions.get(participant.session_id) is participant:
            del self.sessions[participant.session_id]
        self._gc.departed()  # its peer connections' cycles are garbage in frozen objects

    def participant_left(self, room: Room, participant: Participant) -> None:
        self._webhook_left(room, participant)
        dispatcher_for(self).participant_left(room, participant)
        self._check_drained()

    def track_published(self, room: Room, participant: Participant, info: models.TrackInfo) -> None:
        self._webhook_track("track_published", room, participant, info)
        dispatcher_for(self).track_published(room, participant)

    def track_unpublished(
        self, room: Room, participant: Participant, info: models.TrackInfo
    ) -> None:
        self._webhook_track("track_unpublished", room, participant, info)

    def _webhook_track(
        self, name: str, room: Room, publisher: Participant, info: models.TrackInfo
    ) -> None:
        """``track_published`` / ``track_unpublished`` (participant: sid and identity only)."""
        if self.webhooks is not None:
            who = models.ParticipantInfo(sid=publisher.sid, identity=publisher.identity)
            self.webhooks.notify(name, room=room.info(), participant=who, track=info)

    def _webhook_left(self, room: Room, participant: Participant) -> None:
        if self.webhooks is None:
            return
        # its tracks go with it; never connected: LiveKit's participant_connection_aborted
        for info in list(participant.tracks.values()):
            self._webhook_track("track_unpublished", room, participant, info)
        connected = participant.sid in self._announced
        self._announced.discard(participant.sid)
        self.webhooks.notify(
            "participant_left" if connected else "participant_connection_aborted",
            room=room.info(),
            participant=participant.info(),
        )

    # -- bus --------------------------------------------------------------------------------

    async def _consume(self, sub: Subscription) -> None:
        async for env in sub:
            try:
                self._dispatch(env)
            except Exception:
                self.log.exception("cannot dispatch bus message", kind=env.kind)

    def _dispatch(self, env: Envelope) -> None:
        if env.kind in (messages.SIGNAL, messages.CLIENT_GONE):
            participant = self.sessions.get(env.session)
            if participant is not None:
                participant.deliver(env)
            elif env.kind == messages.SIGNAL:
                self.spawn(self._close_session(env.session, "session is not on this node"))
        elif env.kind == messages.JOIN:
            self.spawn(self._join(env))
        elif env.kind == messages.RESUME:
            self.spawn(self._resume(env))
        elif env.kind == messages.RPC:
            self.spawn(self._rpc(env))
        elif env.kind == messages.PEER:
            self._peer(env)
        else:
            self.log.warning("unknown bus message kind", kind=env.kind)

    def _peer(self, env: Envelope) -> None:
        room = self.rooms.get(env.headers.get("room", ""))
        if room is not None:
            room.peer_message(env)
        elif env.headers.get("op") == messages.PEER_HELLO:
            self.spawn(self._open_for_peer(env))

    async def _open_for_peer(self, env: Envelope) -> None:
        """A part of a room we are the home of, but hold no part of yet (every join went
        elsewhere): open the room here to hold its state."""
        name = env.headers.get("room", "")
        async with self.room_lock(name):
            placement = await self.store.get_placement(name)
            if placement is None or placement.node_id != self.node_id:
                return
            room = await self.ensure_room(name, create=True)
        if room is not None:
            room.peer_message(env)

    async def _join(self, env: Envelope) -> None:
        try:
            start = messages.SessionStart.model_validate_json(env.data)
        except ValidationError as exc:
            self.log.warning("malformed join on bus", error=str(exc))
            return
        try:
            async with self.room_lock(start.room):
                room = await self.ensure_room(
                    start.room,
                    create=self.config.room.auto_create and not start.relay_node,
                    agents=room_agents_from_config(start.room_config),
                    home_node=start.home_node,
                )
                if room is None:
                    raise Refusal(Code.NOT_FOUND, f"room {start.room} does not exist")
                await room.join(start)
        except Refusal as exc:
            self.log.info(
                "join refused", room=start.room, identity=start.identity, reason=exc.reason
            )
            await self._send_close(start.session_id, messages.SessionClosed.refused(exc))

    async def _resume(self, env: Envelope) -> None:
        """A ``reconnect=1&sid=`` socket on some edge: re-bind the participant to it."""
        try:
            start = messages.SessionStart.model_validate_json(env.data)
        except ValidationError as exc:
            self.log.warning("malformed resume on bus", error=str(exc))
            return
        async with self.room_lock(start.room):
            room = self.rooms.get(start.room)
            participant = room.participants.get(start.identity) if room is not None else None
            if (
                participant is None
                or participant.sid != start.reconnect_sid
                or not participant.resumable()
            ):
                self.log.info(
                    "resume refused",
                    room=start.room,
                    identity=start.identity,
                    sid=start.reconnect_sid,
                )
                refusal = Refusal(Code.NOT_FOUND, "session cannot be resumed")
                await self._send_close(start.session_id, messages.SessionClosed.refused(refusal))
                return
            assert room is not None
            old = participant.resume(start, room.reconnect_response(participant))
            room.send_resume_snapshot(participant)
            self.sessions.pop(old, None)
            self.sessions[start.session_id] = participant
            self.reaper.resumed(participant)
        if old != start.session_id:  # the old socket, if an edge still holds it, closes
            with contextlib.suppress(Exception):
                await self._close_session(old, "session resumed elsewhere")

    async def _close_session(self, session_id: str, reason: str) -> None:
        await self._send_close(session_id, messages.SessionClosed.ended(reason))

    async def _send_close(self, session_id: str, closed: messages.SessionClosed) -> None:
        await self.bus.publish(
            keys.session_channel(session_id),
            Envelope(
                kind=messages.CLOSE, session=session_id, data=closed.model_dump_json().encode()
            ),
        )

    async def _rpc(self, env: Envelope) -> None:
        method = env.headers.get("method", "")
        try:
            data = await roomapi.handle(self, method, env.data)
        except Refusal as exc:
            await reply(self.bus, env, error=exc)
        except Exception as exc:
            self.log.exception("room api call failed", method=method)
            await reply(self.bus, env, error=Refusal(Code.INTERNAL, f"{method} failed: {exc}"))
        else:
            await reply(self.bus, env, data)
