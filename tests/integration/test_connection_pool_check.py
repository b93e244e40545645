"""The pool's check of a connection it hands out (`_ConveyorConnection.can_read_destructive`)
answers "nothing unread" without a read, and still catches what redis-py's read catches: a
connection holding a stray reply, and one that Redis has closed. Either is replaced, and the
next command gets its own reply. Over TCP and over a Unix socket (a class of its own)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from conveyor.embedded_redis import EmbeddedRedis
from producer.connection import _ConveyorConnection, redis_from_url

pytestmark = pytest.mark.integration


@pytest.fixture(params=["tcp", "unix"])
def url(
    request: pytest.FixtureRequest,
    redis_server: EmbeddedRedis,
    fresh_redis: Callable[..., EmbeddedRedis],
) -> Iterator[str]:
    if request.param == "tcp":
        yield redis_server.url
        return
    # A short directory of its own: a socket's path is limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="conveyor-") as short:
        socket_path = Path(short) / "redis.sock"
        fresh_redis(extra_args=["--unixsocket", str(socket_path), "--unixsocketperm", "700"])
        yield f"unix://{socket_path}"


async def _until(condition: Callable[[], bool], deadline_s: float = 5.0) -> None:
    """Let the event loop run until `condition` holds: it turns true when the loop moves
    bytes (or the end) from the socket into the connection's stream reader."""
    async with asyncio.timeout(deadline_s):
        while not condition():  # noqa: ASYNC110 - a StreamReader offers no event for bytes it buffers
            await asyncio.sleep(0)


async def _client_id(connection: AbstractConnection) -> int:
    await connection.send_command("CLIENT", "ID")
    return int(await connection.read_response())


async def test_an_idle_connection_is_checked_without_a_read(url: str) -> None:
    client = redis_from_url(url)
    connection = await client.connection_pool.get_connection()
    assert isinstance(connection, _ConveyorConnection)
    await _client_id(connection)
    # The fast path is live on the redis-py and hiredis this runs on: were a private name
    # it relies on to move, this would fail rather than silently fall back.
    assert connection._nothing_unread()
    assert await connection.can_read_destructive() is False
    await client.connection_pool.release(connection)
    await client.aclose()


async def _leave_a_stray_reply(connection: AbstractConnection, url: str) -> Callable[[], bool]:
    await connection.send_command("PING")  # its PONG is never read
    stream = connection._reader
    assert stream is not None
    return lambda: bool(getattr(stream, "_buffer", b""))


async def _have_redis_close_it(connection: AbstractConnection, url: str) -> Callable[[], bool]:
    other = redis_from_url(url)
    assert await other.client_kill_filter(_id=await _client_id(connection)) == 1
    await other.aclose()
    stream = connection._reader
    assert stream is not None
    return stream.at_eof


@pytest.mark.parametrize(
    "spoil", [_leave_a_stray_reply, _have_redis_close_it], ids=["stray-reply", "closed"]
)
async def test_a_spoiled_connection_is_replaced(
    url: str, spoil: Callable[[AbstractConnection, str], Awaitable[Callable[[], bool]]]
) -> None:
    client = redis_from_url(url)
    pool = client.connection_pool
    connection = await pool.get_connection()
    spoiled_id = await _client_id(connection)
    await _until(await spoil(connection, url))  # the reply, or the end, has reached it
    await pool.release(connection)

    assert await _answer_of_next_command(client) != spoiled_id
    await client.aclose()


async def _answer_of_next_command(client: Redis) -> int:
    """The next command's answer is its own: a CLIENT ID (an int, not a stray PONG), on a
    fresh connection (the one pool connection was replaced, not reused)."""
    answer = await client.execute_command("CLIENT", "ID")
    assert isinstance(answer, int), answer
    assert len(client.connection_pool._available_connections) == 1  # the same slot, renewed
    return answer
