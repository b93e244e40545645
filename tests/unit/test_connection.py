"""`redis_from_url`: each CONVEYOR_REDIS_URL form gives the right client, without connecting."""

from __future__ import annotations

import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis
from redis.asyncio.sentinel import SentinelConnectionPool

from producer.connection import CONNECTION_CLASSES, ConveyorCluster, redis_from_url


async def test_plain_urls_are_redis_py_from_url() -> None:
    client = redis_from_url("redis://:pw@127.0.0.1:6390/2", socket_timeout=3)
    kwargs = client.connection_pool.connection_kwargs
    assert type(client) is Redis
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 6390, 2)
    assert kwargs["password"] == "pw"
    assert kwargs["decode_responses"] is True and kwargs["socket_timeout"] == 3
    assert isinstance(redis_from_url("unix:///tmp/r.sock", redis_class=ArqRedis), ArqRedis)
    await client.aclose()


async def test_cluster_url_lists_its_seed_nodes() -> None:
    client = redis_from_url(
        "redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2,[::1]:7002",
        socket_timeout=3,
        retry_on_timeout=True,  # a standalone option: dropped, RedisCluster retries itself
    )
    assert isinstance(client, ConveyorCluster)
    # Its nodes get Conveyor's connections too (RedisCluster has no option for that).
    assert client.connection_kwargs["connection_class"] is CONNECTION_CLASSES["redis"]
    seeds = [(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()]
    assert sorted(seeds) == sorted([("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)])
    kwargs = client.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("app", "s@cret")
    assert kwargs["decode_responses"] is True and kwargs["socket_timeout"] == 3


def test_sentinel_url_names_its_sentinels_service_and_db() -> None:
    client = redis_from_url(
        "redis+sentinel://:pw@s1:26380,s2/mymaster/3?sentinel_password=spw",
        redis_class=ArqRedis,
        socket_timeout=3,
    )
    assert isinstance(client, ArqRedis)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "pw"
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26380, 26379]
    assert all(s.connection_pool.connection_kwargs["password"] == "spw" for s in sentinels)
    assert all(s.connection_pool.connection_kwargs["socket_timeout"] == 3 for s in sentinels)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memcached://x", "unsupported Redis URL scheme"),
        ("redis+cluster://h:7000/1", "only database 0"),
        ("redis+cluster://h:7000?foo=1", "unsupported options"),
        ("redis+cluster://", "no host"),
        ("redis+sentinel://s1:26379", "service"),
        ("redis+sentinel://s1/master?ssl=1", "unsupported options"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        redis_from_url(url)


@pytest.mark.parametrize("scheme", ["redis", "rediss", "unix"])
async def test_every_plain_scheme_gets_conveyors_connections(scheme: str) -> None:
    """redis-py's from_url picks its own class for rediss:// and unix:// over one passed in;
    the pool is given Conveyor's after (its packer, write deadline and pool check)."""
    url = {"unix": "unix:///tmp/r.sock"}.get(scheme, f"{scheme}://127.0.0.1:6390/0")
    client = redis_from_url(url)
    assert client.connection_pool.connection_class is CONNECTION_CLASSES[scheme]
    await client.aclose()
