"""ICE restarts on aioice itself: a connected server connection, the client's first generation,
and the client's new generation (new sockets, new credentials) as separate aioice connections,
as a browser's ICE restart makes them.

The remote side's restart (rtphooks.restart_remote_credentials, the publisher connection):
without it the new generation's checks are refused; with it they succeed, the server sends on
the new pair, and the old generation's checks are still answered meanwhile.

Our own restart (rtphooks.restart_local_credentials, the subscriber connection we offer and
control): new local credentials; checks of both local generations are answered, each signed
with its own password; the new generation's pairs are checked (and nominated) once the client's
answer gave its credentials, and the server then sends on the new pair and says so. The
negotiation makes the restart in the next offer it creates, after an offer already out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aioice
from aioice import stun

from tests.sfu.test_negotiation import ANSWER, FakePeer
from trackyard.sfu.negotiation import NegotiationState, SubscriberNegotiation
from trackyard.sfu.rtphooks import (
    answered_local_credentials,
    on_nominated,
    restart_local_credentials,
    restart_remote_credentials,
)

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


async def _binding(
    client: aioice.Connection,
    server: aioice.Connection,
    username: str,
    password: str | None = None,
) -> int:
    """A connectivity check from ``client``'s first socket to ``server``'s first candidate
    with ``username``, signed with ``password`` (default: the server's): 0 if answered with a
    response signed with that password, else the error code (sent without a response key:
    aioice would drop the unsigned 401 and retransmit)."""
    key = (password or server.local_password).encode()
    protocol = client._protocols[0]
    target = server.local_candidates[0]
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1
    # the client's role: the opposite of the server's (else a role conflict, 487)
    role = "ICE-CONTROLLED" if server.ice_controlling else "ICE-CONTROLLING"
    request.attributes[role] = 1
    request.add_message_integrity(key)
    request.add_fingerprint()
    try:
        response, _addr = await asyncio.wait_for(
            protocol.request(request, (target.host, target.port)), TIMEOUT
        )
    except stun.TransactionFailed as failed:
        return int(failed.response.attributes["ERROR-CODE"][0])
    assert response.check_message_integrity(key), "response not signed with the check's key"
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


async def test_local_restart_moves_to_the_new_generation() -> None:
    # the server offered: it is the controlling side, the client's generations controlled
    async with _connections(True, False, False, False) as (server, old, new, stranger):
        await _introduce(server, old)
        await _connected(server, old)
        old_pair = server._nominated[1]
        old_ufrag, old_password = server.local_username, server.local_password
        nominated = asyncio.Event()
        on_nominated(server, nominated.set)

        restart_local_credentials(server, "newufrag", "n" * 24)
        assert (server.local_username, server.local_password) == ("newufrag", "n" * 24)
        # the old generation is still answered, with its own password (its path keeps
        # working until the new one is nominated); a wrong password or ufrag is not
        assert await _binding(old, server, f"{old_ufrag}:{old.local_username}", old_password) == 0
        assert await _binding(old, server, f"{old_ufrag}:{old.local_username}") == 401
        assert await _binding(old, server, f"zzzz:{old.local_username}", old_password) == 401
        # the new generation is answered before the client's answer gave its ufrag ...
        assert await _binding(new, server, f"newufrag:{new.local_username}") == 0
        # ... but not checked back yet: a triggered check would carry the old credentials
        new_addr = new.local_candidates[0].host, new.local_candidates[0].port
        assert not any(p.remote_addr == new_addr for p in server._check_list)
        assert server._nominated[1] is old_pair and not nominated.is_set()

        new.remote_username, new.remote_password = "newufrag", "n" * 24
        for candidate in server.local_candidates:
            await new.add_remote_candidate(candidate)
        await new.add_remote_candidate(None)
        connecting = asyncio.ensure_future(new.connect())
        try:
            assert answered_local_credentials(server, new.local_username, new.local_password)
            await asyncio.wait_for(nominated.wait(), TIMEOUT)
            await asyncio.wait_for(asyncio.shield(connecting), TIMEOUT)
        finally:
            if not connecting.done():
                connecting.cancel()
        new_pair = server._nominated[1]
        assert new_pair is not old_pair
        assert new_pair.remote_addr == new._nominated[1].local_addr
        await server.send(b"after the restart")
        assert await asyncio.wait_for(new.recv(), TIMEOUT) == b"after the restart"
        # answered: the new generation needs the client's ufrag now
        assert await _binding(stranger, server, f"newufrag:{stranger.local_username}") == 401
        assert await _binding(new, server, f"newufrag:{new.local_username}") == 0


async def test_negotiation_restarts_in_the_offer_after_the_one_out() -> None:
    pc = FakePeer()
    pc.connectionState = "connected"
    offers: list[str] = []
    restarted_before: list[int] = []  # offers created before each restart
    answers: list[str] = []
    tasks: list[asyncio.Task[Any]] = []

    async def failed(what: str, problem: str) -> None:
        raise AssertionError(f"negotiation failed: {what}: {problem}")

    def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        tasks.append(asyncio.ensure_future(coro))
        return tasks[-1]

    negotiation = SubscriberNegotiation(
        pc,
        send_offer=lambda sdp, _id: offers.append(sdp),
        failed=failed,
        spawn=spawn,
        restart_local_ice=lambda: restarted_before.append(pc.offers_made),
        answer_applied=answers.append,
    )
    await negotiation.request()
    negotiation.restart_ice()  # a resume while offer 1 is out: it is answered first
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert negotiation.state is NegotiationState.RENEGOTIATE_PENDING
    assert restarted_before == [] and offers == ["offer 1"]
    await negotiation.answer(ANSWER, "answer", 1)
    assert answers == [ANSWER]
    assert restarted_before == [1] and offers == ["offer 1", "offer 2"]
    await negotiation.answer(ANSWER, "answer", 2)
    assert answers == [ANSWER, ANSWER]
    await negotiation.request()  # a later change: no restart again
    assert restarted_before == [1] and offers[-1] == "offer 3"
