"""Conveyor's Redis connections on a real server: a write that races a disconnect by another
task is a ConnectionError (which every retry loop knows), not redis-py 5's AttributeError."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError

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
