"""`redis_from_url(url, **options)`: the one place a `CONVEYOR_REDIS_URL` becomes a client.

URL forms (README, "Redis deployments: Sentinel and Cluster")::

    redis://[[user]:password@]host[:port][/db]          one Redis (redis-py's from_url)
    rediss://...                                         the same over TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=N]  a local socket
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_password=P]
    rediss+sentinel://...                                the master over TLS
    redis+cluster://[[user]:password@]host[:port][,host[:port]...]
    rediss+cluster://...                                 the cluster over TLS

Sentinel ports default to 26379, cluster ports to 6379. The user and password are the data
nodes' (for Sentinel: the master's); sentinels that require their own password get it from
`sentinel_password`.

Redis Cluster works because every key of a queue carries the hash tag `{queue}`, so each
script and each pipeline of one queue touches one slot. redis-py's async cluster pipeline
needs two adjustments for Conveyor's pipelined scripts, made by `ClusterPipeline` below.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterable
from typing import Any, TypeVar, cast, overload
from urllib.parse import parse_qs, unquote, urlsplit

from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.cluster import ClusterPipeline as _RedisClusterPipeline
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.cluster import get_node_name
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError, NoScriptError, RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

__all__ = ["ClusterPipeline", "ConveyorCluster", "SentinelPool", "redis_from_url"]

R = TypeVar("R", bound=Redis)

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_CLUSTER_PORT = 6379

# Options of redis-py's standalone client that RedisCluster does not take. It retries on
# timeouts and connection errors by itself (cluster_error_retry_attempts), re-reading the
# slot map in between, which is what `retry_on_timeout` would ask for.
_STANDALONE_ONLY = frozenset({"retry_on_timeout", "single_connection_client"})


@overload
def redis_from_url(url: str, *, redis_class: type[R], **options: Any) -> R: ...
@overload
def redis_from_url(url: str, **options: Any) -> Redis: ...
def redis_from_url(url: str, *, redis_class: type[Redis] = Redis, **options: Any) -> Redis:
    """A client for `url`, decoding responses to str. `options` (socket timeouts, health
    checks) go to every connection; `redis_class` chooses the standalone client class
    (the worker passes arq's `ArqRedis`).

    A cluster URL gives a `ConveyorCluster`, typed as `redis_class` on purpose: it offers
    the same command methods and `pipeline(transaction=False)` that Conveyor uses, and
    what it lacks (MULTI, commands whose keys span slots) Conveyor never calls on one
    queue's keys; tests/integration/test_cluster.py runs the producer, the worker and the
    gateway on it. One client type keeps the rest of the code free of unions. (Nor has it
    arq's own methods: a handler cannot `ctx["redis"].enqueue_job` on a cluster.)
    """
    options.setdefault("decode_responses", True)
    scheme = url.partition("://")[0].lower()
    if scheme in CLUSTER_SCHEMES:
        return cast(Redis, _cluster(url, ssl=CLUSTER_SCHEMES[scheme], **options))
    if scheme in SENTINEL_SCHEMES:
        return _sentinel(url, redis_class, ssl=SENTINEL_SCHEMES[scheme], **options)
    if scheme not in {"redis", "rediss", "unix"}:
        raise ValueError(
            f"unsupported Redis URL scheme {scheme!r}: use redis://, rediss://, unix://, "
            "redis+sentinel:// or redis+cluster://"
        )
    chosen = options.get("connection_class")
    client: Redis = redis_class.from_url(url, **options)
    if HIREDIS_AVAILABLE and chosen is None:
        # Told after: redis-py's from_url puts its own class for rediss:// and unix:// over
        # a `connection_class` passed in (its URL's options win), which left TLS and Unix
        # socket clients on plain redis-py connections.
        client.connection_pool.connection_class = CONNECTION_CLASSES[scheme]
    return client


class _ConveyorConnection(AbstractConnection):
    """What Conveyor changes in redis-py's asyncio connections; the classes below add it
    to each transport (TCP, TLS, Unix socket)."""

    # redis-py's asyncio connections pack commands in Python (its sync ones use hiredis):
    # ~15 us for one of our EVALSHA calls against ~2 us with hiredis's C packer, which was
    # the largest cost in a consumer's profile. Same serializer redis-py's sync client uses.
    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._packer.pack(*args)
        return packed

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        """A write that races a disconnect by another task (a cluster re-discovery closes
        every node's connections) fails inside redis-py 5 with an AttributeError or
        TypeError from the torn-down writer (redis/redis-py#3546; fixed upstream by #4217,
        in a line arq 0.28 cannot use). No retry layer knows those, so a worker's loop
        died on one during a cluster restart. Report it as what it is: the connection is
        gone (redis-py has already dropped it)."""
        # The write's deadline is `socket_timeout`, kept here with `asyncio.timeout`: redis-py
        # keeps it with `asyncio.wait_for`, which on Python 3.11 makes a task for every
        # command written (4% of a gateway's CPU per submit, bench.http_submit). The
        # connection is one task's at a time, so the attribute is its own while it writes.
        timeout, self.socket_timeout = self.socket_timeout, None
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)
        except (AttributeError, TypeError) as exc:
            raise ConnectionError(f"connection closed while writing: {exc}") from exc
        except TimeoutError:  # as redis-py's own deadline says it (it has disconnected)
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout

    async def can_read_destructive(self) -> bool:
        """The pool asks this of every connection it hands out, to catch one that holds a
        stray reply or that Redis has closed. redis-py answers by trying a read under a
        zero timeout, which on an idle connection (the usual case) always ends in a
        cancelled read: 15 us of the client's CPU per command (a loop of HGETs took 72 us
        a round trip with it and 57 without), the largest cost of the pool.

        Nothing can be unread while the stream reader's buffer and hiredis's are empty
        and the stream has seen neither its end nor an error: the event loop moves every
        byte that arrives into that buffer. So say so without reading. Anything else, or
        a reader or parser that is not the one this was verified on (asyncio's
        StreamReader and redis-py 5's hiredis parser: `_buffer` and `_reader` are theirs
        and private), takes redis-py's own check. A byte still in the kernel when this
        runs is found by the next command's check, as a byte arriving just after
        redis-py's own check would be.

        What redis-py's read gave besides: a suspension before the write. A deadline that
        ran out during synchronous work (a stall of the process) cancelled the call there,
        before its command was sent. Now the command is sent and the deadline lands on its
        read, as when a deadline ends while a reply is on its way: the caller cannot tell
        whether it ran, which the gateway's 503 on a submit already says (README, "503").
        Yielding here to keep that (`await asyncio.sleep(0)`) took back nearly all of the
        saving: bench.http_submit's ratio 0.49 and 302 us per submit, against 0.55 and
        269 us without, one run after the other.
        """
        if self._nothing_unread():
            return False
        return bool(await super().can_read_destructive())  # type: ignore[no-untyped-call]

    def _nothing_unread(self) -> bool:
        stream, parser = self._reader, self._parser
        if stream is None or type(parser) is not _AsyncHiredisParser:
            return False
        buffered = getattr(stream, "_buffer", None)
        hiredis_reader = getattr(parser, "_reader", None)
        return (
            isinstance(buffered, bytearray)
            and not buffered
            and not stream.at_eof()
            and stream.exception() is None
            and hiredis_reader is not None
            and not hiredis_reader.has_data()
        )


class _FastConnection(_ConveyorConnection, Connection):
    pass


class _FastSSLConnection(_ConveyorConnection, SSLConnection):
    pass


class _FastUnixConnection(_ConveyorConnection, UnixDomainSocketConnection):
    pass


CONNECTION_CLASSES: dict[str, type[AbstractConnection]] = {
    "redis": _FastConnection,
    "rediss": _FastSSLConnection,
    "unix": _FastUnixConnection,
}


def _split_hosts(
    url: str, default_port: int
) -> tuple[list[tuple[str, int]], tuple[str, str, dict[str, list[str]]]]:
    """Hosts of a multi-host URL (`host[:port],...`; IPv6 as `[addr]:port`), and the rest
    of the URL: (userinfo, path, query)."""
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    hosts: list[tuple[str, int]] = []
    for item in filter(None, (h.strip() for h in hostlist.split(","))):
        # urlsplit parses one host at a time, IPv6 brackets included.
        one = urlsplit(f"//{item}")
        if not one.hostname:
            raise ValueError(f"bad host {item!r} in Redis URL")
        hosts.append((one.hostname, one.port or default_port))
    if not hosts:
        raise ValueError(f"no host in Redis URL {_redact(url)!r}")
    return hosts, (userinfo, parts.path, parse_qs(parts.query))


def _credentials(userinfo: str) -> dict[str, str]:
    if not userinfo:
        return {}
    user, has_password, password = userinfo.partition(":")
    creds = {}
    if user:
        creds["username"] = unquote(user)
    if has_password:
        creds["password"] = unquote(password)
    return creds


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    _, at, hosts = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{hosts}"


def _cluster(url: str, *, ssl: bool, **options: Any) -> ConveyorCluster:
    hosts, (userinfo, path, query) = _split_hosts(url, DEFAULT_CLUSTER_PORT)
    if path.strip("/") not in {"", "0"}:
        raise ValueError("Redis Cluster has only database 0: drop the /db from the URL")
    if query:
        raise ValueError(f"unsupported options in a cluster URL: {sorted(query)}")
    for name in _STANDALONE_ONLY:
        options.pop(name, None)
    # redis-py's type hints call its cluster classes abstract (a `connection_pool` they
    # never have); they are not.
    cluster = ConveyorCluster(  # type: ignore[abstract]
        startup_nodes=[ClusterNode(host, port) for host, port in hosts],
        ssl=ssl,
        **_credentials(userinfo),
        **options,
    )
    if HIREDIS_AVAILABLE:
        # RedisCluster has no connection_class option (it picks Connection or SSLConnection
        # itself); every node it makes from here on reads this dict.
        scheme = "rediss" if ssl else "redis"
        cluster.connection_kwargs["connection_class"] = CONNECTION_CLASSES[scheme]
    return cluster


def _sentinel(url: str, redis_class: type[R], *, ssl: bool, **options: Any) -> R:
    hosts, (userinfo, path, query) = _split_hosts(url, DEFAULT_SENTINEL_PORT)
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("a Sentinel URL names the master's service: .../service_name[/db]")
    unknown = set(query) - {"sentinel_password"}
    if unknown:
        raise ValueError(f"unsupported options in a Sentinel URL: {sorted(unknown)}")
    # Sentinels get the socket options (so a dead sentinel cannot hang discovery) and their
    # own password if they need one; the data connections get everything.
    sentinel_kwargs: dict[str, Any] = {k: v for k, v in options.items() if k.startswith("socket_")}
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"][-1]
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts,
        sentinel_kwargs=sentinel_kwargs,
        db=int(db or 0),
        ssl=ssl,
        **_credentials(userinfo),
        **options,
    )
    client: R = sentinel.master_for(
        service, redis_class=redis_class, connection_pool_class=SentinelPool
    )
    return client


class SentinelPool(SentinelConnectionPool):
    """The master's pool, which also closes the connections to the sentinels when the
    client closes: redis-py leaves those open (and leaks their sockets) otherwise."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        for sentinel in self.sentinel_manager.sentinels:
            await sentinel.connection_pool.disconnect(inuse_connections)


class ConveyorCluster(RedisCluster):
    """RedisCluster whose pipelines run Conveyor's scripts (see `ClusterPipeline`). It also
    remembers each registered script's source, to load it again on a node that lost it,
    and reports an unreachable cluster as a `ConnectionError` (see `initialize`)."""

    def __init__(self, *, startup_nodes: list[ClusterNode], **kwargs: Any) -> None:
        super().__init__(startup_nodes=startup_nodes, **kwargs)
        self.seeds = [(node.host, node.port) for node in startup_nodes]
        self.script_sources: dict[str, Any] = {}

    async def initialize(self) -> ConveyorCluster:
        # redis-py drops a node from its startup nodes when a connection to it fails; after
        # an outage of the whole cluster it could have none left to rediscover it from.
        startup = self.nodes_manager.startup_nodes
        for host, port in self.seeds:
            if get_node_name(host, port) not in startup:
                startup[get_node_name(host, port)] = ClusterNode(
                    host, port, **self.connection_kwargs
                )
        try:
            await super().initialize()
        except RedisClusterException as exc:
            # Not a RedisError in redis-py, though it means "Redis is unavailable", which is
            # what the workers' and the gateway's retry loops and 503s are written for.
            raise ConnectionError(f"Redis Cluster unavailable: {exc}") from exc
        return self

    def register_script(self, script: Any) -> AsyncScript:  # type: ignore[override]
        registered = AsyncScript(self, script)  # type: ignore[arg-type]
        self.script_sources[registered.sha] = script
        return registered

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        # The checks of RedisCluster.pipeline: no MULTI/EXEC across a cluster.
        super().pipeline(transaction, shard_hint)
        return ClusterPipeline(self)  # type: ignore[abstract]


class ClusterPipeline(_RedisClusterPipeline):
    """redis-py's async cluster pipeline, fitted for Conveyor's pipelined scripts:

    - EVALSHA is allowed. redis-py blocks it in cluster pipelines because it cannot load a
      missing script there; `execute` does that instead: commands that answered NOSCRIPT
      (a node restarted, or a replica promoted by a failover, has an empty script cache)
      never ran, so loading the script on every primary and sending just those again is
      safe. The others ran once and are not repeated.
    - Awaiting the pipeline does not empty it. redis-py's `AsyncScript(client=pipe)` awaits
      `pipe.evalsha(...)`, i.e. the pipeline itself, and the base `__await__` re-initialises
      it, which would drop every command queued so far.
    """

    _client: ConveyorCluster

    def __await__(self) -> Generator[Any, None, ClusterPipeline]:
        return self._ready().__await__()

    async def _ready(self) -> ClusterPipeline:
        if self._client._initialize:
            await self._client.initialize()
        return self

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> ClusterPipeline:  # type: ignore[override]
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)  # type: ignore[return-value]

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        stack = self._command_stack  # the base class replaces (not clears) it when done
        results = await super().execute(raise_on_error=False, allow_redirections=allow_redirections)
        missing = [
            i
            for i, result in enumerate(results)
            if isinstance(result, NoScriptError) and stack[i].args[1] in self._client.script_sources
        ]
        if missing:
            for sha in {stack[i].args[1] for i in missing}:
                await self._client.script_load(self._client.script_sources[sha])
            again = ClusterPipeline(self._client)  # type: ignore[abstract]
            for i in missing:
                again.execute_command(*stack[i].args)
            # The base class's execute: a script missing even now is an error, not a loop.
            retried = await _RedisClusterPipeline.execute(again, raise_on_error=False)
            for i, result in zip(missing, retried, strict=True):
                results[i] = result
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results
