"""Every Redis key and bus channel name, in one place. Nothing else spells a key."""

from __future__ import annotations

PREFIX = "trackyard:"

# store ----------------------------------------------------------------------------------
ROOMS = PREFIX + "rooms"  # hash: room name -> models.Room bytes
NODES = PREFIX + "nodes"  # sorted set: node id -> expiry (unix seconds)
PLACEMENTS = PREFIX + "placements"  # hash: room name -> "node_id|epoch"
EPOCHS = PREFIX + "epochs"  # hash: room name -> last epoch handed out
HEARTBEATS = PREFIX + "heartbeats"  # hash: node id -> store clock (ms) of its last record write
GENERATION = PREFIX + "generation"  # string: "<random>|<unix s>", made anew by an empty store
AGENT_WORKERS = PREFIX + "agent_workers"  # hash: worker id -> agentmessages.WorkerRecord JSON
AGENT_JOBS = PREFIX + "agent_jobs"  # hash: job id -> agentmessages.JobRecord JSON


def participants(room: str) -> str:
    """hash: identity -> models.ParticipantInfo bytes"""
    return f"{PREFIX}participants:{room}"


def seats(room: str) -> str:
    """hash: identity -> id of the node the participant is (or is being) hosted on"""
    return f"{PREFIX}seats:{room}"


def node(node_id: str) -> str:
    """string with TTL: NodeRecord JSON"""
    return f"{PREFIX}node:{node_id}"


def edge(edge_id: str) -> str:
    """string with TTL: a signal edge's registration (its liveness for the nodes)"""
    return f"{PREFIX}edge:{edge_id}"


# bus channels (Redis streams) -----------------------------------------------------------


def node_channel(node_id: str) -> str:
    """Inbound to an SFU node: session starts, client signal messages, API calls."""
    return f"{PREFIX}bus:node:{node_id}"


def session_channel(session_id: str) -> str:
    """Outbound from the hosting node to the edge holding the session's WebSocket."""
    return f"{PREFIX}bus:session:{session_id}"


def reply_channel(caller_id: str) -> str:
    """Replies to API calls made by one process."""
    return f"{PREFIX}bus:reply:{caller_id}"


def agent_channel(edge_id: str) -> str:
    """Inbound to a signal edge's agent hub: job offers and terminations for its workers."""
    return f"{PREFIX}bus:agents:{edge_id}"


def bus_wakeup(token: str) -> str:
    """A bus instance's private stream: appending to it ends its reader's blocked XREAD."""
    return f"{PREFIX}bus:wakeup:{token}"
