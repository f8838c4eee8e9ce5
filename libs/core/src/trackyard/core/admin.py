"""Operator actions on the cluster (the drain API), shared by the edge and the SFU node.

The edge's ``POST /admin/nodes/{id}/drain`` calls the node's ``DrainNode`` method over the bus
(:mod:`trackyard.core.noderpc`); the node drains exactly as on SIGTERM, with the deadline given
here instead of ``node.drain_deadline``, and answers with its record.
The request and response travel as JSON in a protobuf ``StringValue`` (the node RPC carries
protobuf messages).
"""

from __future__ import annotations

from google.protobuf.wrappers_pb2 import StringValue
from pydantic import BaseModel, Field, ValidationError

from trackyard.core import messages
from trackyard.core.node import NodeRecord
from trackyard.core.noderpc import NodeRpcClient
from trackyard.core.refusal import Code, Refusal

DRAIN_METHOD = "DrainNode"
DRAIN_TIMEOUT_SECONDS = messages.RPC_TIMEOUT_SECONDS


class DrainRequest(BaseModel):
    """``deadline``: seconds from now after which participants still there are moved to
    other nodes (0 = wait for the last one); ``None`` keeps the node's ``node.drain_deadline``.
    On a node already draining, a deadline replaces the running one."""

    deadline: float | None = Field(None, ge=0, le=7 * 24 * 3600)


def encode_drain(request: DrainRequest) -> bytes:
    return StringValue(value=request.model_dump_json()).SerializeToString()


def decode_drain(data: bytes) -> DrainRequest:
    try:
        return DrainRequest.model_validate_json(StringValue.FromString(data).value or "{}")
    except (ValidationError, ValueError) as exc:
        raise Refusal(Code.INVALID_ARGUMENT, f"bad drain request: {exc}") from None


def record_reply(record: NodeRecord) -> StringValue:
    return StringValue(value=record.model_dump_json())


async def drain_node(rpc: NodeRpcClient, node_id: str, request: DrainRequest) -> NodeRecord:
    """Ask ``node_id`` to drain; its record as it stands after (raises :class:`Refusal`)."""
    data = await rpc.call(node_id, DRAIN_METHOD, encode_drain(request), DRAIN_TIMEOUT_SECONDS)
    try:
        return NodeRecord.model_validate_json(StringValue.FromString(data).value)
    except (ValidationError, ValueError) as exc:
        raise Refusal(Code.INTERNAL, f"node answered drain with a bad record: {exc}") from None
