"""The remote side's ICE restart (rtphooks.restart_remote_credentials), on aioice itself: a
connected server connection, the client's first generation, and the client's new generation
(new sockets, new credentials) as separate aioice connections, as a browser's ICE restart makes
them. Without the restart the new generation's checks are refused; with it they succeed, the
server sends on the new pair, and the old generation's checks are still answered meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aioice
from aioice import stun

from trackyard.sfu.rtphooks import restart_remote_credentials

TIMEOUT = 10.0


async def _introduce(local: aioice.Connection, remote: aioice.Connection) -> None:
    """Give ``local`` the credentials and candidates of ``remote`` (what signalling does)."""
    local.remote_username = remote.local_username
    local.remote_password = remote.local_password
    for candidate in remote.local_candidates:
        await local.add_remote_candidate(candidate)
    await local.add_remote_candidate(None)


@contextlib.asynccontextmanager
async def _connections(*controlling: bool) -> AsyncIterator[list[aioice.Connection]]:
    made = [aioice.Connection(ice_controlling=c, use_ipv6=False) for c in controlling]
    try:
        await asyncio.gather(*(c.gather_candidates() for c in made))
        assert all(c.local_candidates for c in made), "no host address to gather on"
        yield made
    finally:
        for c in made:
            await c.close()


async def _connected(server: aioice.Connection, client: aioice.Connection) -> None:
    await _introduce(client, server)
    await asyncio.wait_for(asyncio.gather(server.connect(), client.connect()), TIMEOUT)


async def _new_generation(server: aioice.Connection, client: aioice.Connection) -> None:
    """The client's new generation connects: it checks the server (which does not learn its
    candidates: they show up as peer-reflexive, as when they are trickled late)."""
    client.remote_username = server.local_username
    client.remote_password = server.local_password
    for candidate in server.local_candidates:
        await client.add_remote_candidate(candidate)
    await client.add_remote_candidate(None)
    await asyncio.wait_for(client.connect(), TIMEOUT)


async def _binding(client: aioice.Connection, server: aioice.Connection, username: str) -> int:
    """A connectivity check from ``client``'s first socket to ``server``'s first candidate
    with ``username``, signed with the server's password: 0 if answered, else the error code
    (sent without a response key: aioice would drop the unsigned 401 and retransmit)."""
    protocol = client._protocols[0]
    target = server.local_candidates[0]
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1
    request.attributes["ICE-CONTROLLING"] = 1
    request.add_message_integrity(server.local_password.encode())
    request.add_fingerprint()
    try:
        await asyncio.wait_for(protocol.request(request, (target.host, target.port)), TIMEOUT)
    except stun.TransactionFailed as failed:
        return int(failed.response.attributes["ERROR-CODE"][0])
    return 0


def _username(server: aioice.Connection, client: aioice.Connection) -> str:
    return f"{server.local_username}:{client.local_username}"


async def test_new_generation_refused_without_restart() -> None:
    async with _connections(False, True, True) as (server, old, new):
        await _introduce(server, old)
        await _connected(server, old)
        assert await _binding(old, server, _username(server, old)) == 0
        assert await _binding(new, server, _username(server, new)) == 401


async def test_restart_moves_to_the_new_generation() -> None:
    async with _connections(False, True, True, True) as (server, old, new, stranger):
        assert not restart_remote_credentials(server, "abcd", "x" * 22)  # not started yet
        await _introduce(server, old)
        await _connected(server, old)
        old_pair = server._nominated[1]
        assert not restart_remote_credentials(server, old.local_username, old.local_password)

        assert restart_remote_credentials(server, new.local_username, new.local_password)
        # the old generation's checks are still answered (its path keeps working until the
        # client moves), a generation the server never heard of is not
        assert await _binding(old, server, _username(server, old)) == 0
        assert await _binding(stranger, server, _username(server, stranger)) == 401
        # the new generation connects and nominates, and the server sends on its pair
        await _new_generation(server, new)
        new_pair = server._nominated[1]
        assert new_pair is not old_pair
        assert new_pair.remote_addr == new._nominated[1].local_addr
        await server.send(b"after the restart")
        assert await asyncio.wait_for(new.recv(), TIMEOUT) == b"after the restart"
