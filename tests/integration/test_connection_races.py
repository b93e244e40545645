"""Conveyor's Redis connections on a real server: a write that races a disconnect by another
task is a ConnectionError (which every retry loop knows), not redis-py 5's AttributeError;
a write that Redis does not take ends at its deadline."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import pytest
from redis.exceptions import ConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor.embedded_redis import EmbeddedRedis
from producer.connection import redis_from_url

pytestmark = pytest.mark.integration


async def test_a_write_racing_a_disconnect_is_a_connection_error(
    redis_server: EmbeddedRedis,
) -> None:
    client = redis_from_url(redis_server.url)
    connection = client.connection_pool.make_connection()
    await connection.connect()

    async def torn_down_meanwhile() -> None:  # another task's disconnect, at an await point
        await connection.disconnect(nowait=True)

    connection.check_health = torn_down_meanwhile  # type: ignore[method-assign]
    with pytest.raises(ConnectionError, match="connection closed while writing"):
        await connection.send_command("PING")

    del connection.check_health  # the next use connects again and works
    await connection.connect()
    await connection.send_command("PING")
    assert await connection.read_response() == "PONG"
    await connection.disconnect()
    await client.aclose()


async def test_a_write_to_a_frozen_redis_keeps_its_deadline(
    fresh_redis: Callable[..., EmbeddedRedis],
) -> None:
    """A command too big for the socket's buffers, to a Redis that reads nothing, ends at
    `socket_timeout` as redis-py's write timeout (the deadline `send_packed_command` keeps
    with `asyncio.timeout` in place of redis-py's `wait_for`), not a hang."""
    server = fresh_redis()
    client = redis_from_url(server.url, socket_timeout=0.5)
    connection = await client.connection_pool.get_connection()
    writer = connection._writer
    assert writer is not None
    await client.connection_pool.release(connection)  # the one the SET takes
    os.kill(server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(RedisTimeoutError, match="Timeout writing to socket"):
            async with asyncio.timeout(10):  # a hang fails here instead
                await client.set("big", b"x" * (64 << 20))
    finally:
        os.kill(server.pid, signal.SIGCONT)
    # redis-py closed the timed-out connection, whose transport would flush its unsent
    # megabytes first: drop them.
    writer.transport.abort()
    assert await client.set("small", "after") is True  # a new connection, as ever
    await client.aclose()
