"""The built-in `ingest_url` job: fetch a URL and stream its body into S3, never holding it.

Server-side request forgery is the risk of any "fetch this URL" job: a client names an address
that only the worker can reach (loopback, the private network, the cloud metadata service). The
check is made where it cannot be raced: inside the connection itself. httpx's transport is given
a network backend that resolves the host, refuses any blocked address, connects to the address it
validated (not to the name, which could resolve differently a second time: DNS rebinding), and
checks the connected socket's peer address again. Redirects are followed here, one hop at a time,
so every hop goes through the same backend.

    IngestRefused (PermanentError)  bad scheme, blocked address, too large, 4xx: never retried
    IngestError (RetryableError)    network failure, timeout, 5xx, 429: the retry policy decides
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Annotated, Any
from urllib.parse import unquote

import httpcore
import httpx
from pydantic import Field

from consumers.context import JobContext
from consumers.errors import PermanentError, RetryableError
from schemas.models import Artifact
from schemas.settings import Settings, get_settings

__all__ = ["IngestError", "IngestRefused", "blocked_reason", "ingest_url"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_REDIRECTS = 5
RETRYABLE_STATUSES = frozenset({408, 425, 429})
# Cloud metadata services. Most sit in ranges refused anyway (link-local, unique-local,
# shared); they are named so that the refusal says what was hit.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)


class IngestRefused(PermanentError):
    """The URL may not or cannot be ingested: retrying would be refused the same way."""


class IngestError(RetryableError):
    """Fetching failed in a way that may pass: network, timeout, a 5xx or a 429."""


def blocked_reason(ip: IPAddress) -> str | None:
    """Why a worker must not connect to `ip` on a client's behalf, or None if it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address wrapped in IPv6 reaches the IPv4 host: judge that one.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return blocked_reason(embedded)
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    for reason, hit in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    ):
        if hit:
            return reason
    # Shared (CGNAT), benchmarking, documentation ... ranges: not the public internet.
    return None if ip.is_global else "not globally routable"


def _host_and_port(entry: str) -> tuple[str, int | None]:
    """An allow-list entry: `host` (every port), `host:port`, `[v6]` or `[v6]:port`. A bare
    IPv6 address (`::1`) has several colons and names every port too."""
    entry = entry.strip().lower()
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d{1,5}))?", entry)
    if bracketed:
        host, port = bracketed.groups()
        return host, int(port) if port else None
    name, sep, port = entry.rpartition(":")
    if sep and ":" not in name and port.isdigit():
        return name, int(port)
    return entry, None


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the address check between resolving and connecting."""

    def __init__(self, allowed_hosts: Iterable[str]) -> None:
        self._any_port: set[str] = set()
        self._ports: set[tuple[str, int]] = set()
        for entry in allowed_hosts:
            host, port = _host_and_port(entry)
            if host and port is None:
                self._any_port.add(host)
            elif host and port is not None:
                self._ports.add((host, port))
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        allowed = host.lower() in self._any_port or (host.lower(), port) in self._ports
        addresses = await self._resolve(host, port, timeout)
        if not allowed:
            for ip in addresses:
                self._refuse_if_blocked(host, ip)
        error: Exception = httpcore.ConnectError(f"{host} has no address")
        for ip in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    str(ip), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            if not allowed:
                peer = stream.get_extra_info("server_addr")
                try:
                    self._refuse_if_blocked(host, ipaddress.ip_address(peer[0].split("%")[0]))
                except IngestRefused:
                    await stream.aclose()
                    raise
            return stream
        raise error

    async def _resolve(self, host: str, port: int, limit_s: float | None) -> list[IPAddress]:
        try:
            async with asyncio.timeout(limit_s):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        seen: dict[IPAddress, None] = {}
        for _family, _type, _proto, _name, sockaddr in infos:
            seen.setdefault(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]), None)
        return list(seen)

    @staticmethod
    def _refuse_if_blocked(host: str, ip: IPAddress) -> None:
        reason = blocked_reason(ip)
        if reason is not None:
            raise IngestRefused(
                f"refusing to fetch from {host}: it resolves to {ip} ({reason}); "
                "add it to CONVEYOR_INGEST_ALLOWED_HOSTS to allow it"
            )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise IngestRefused("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request and error mapping) over a guarded connection pool.

    The seam: httpx 0.28 takes no network backend, so its `_pool` is replaced by an
    identical `httpcore.AsyncConnectionPool` given one."""

    def __init__(self, allowed_hosts: Iterable[str]) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=4,
            network_backend=_GuardedBackend(allowed_hosts),
        )


# For other outbound calls to addresses users choose (callbacks): the same guard.
GuardedTransport = _GuardedTransport


def _check_scheme(url: httpx.URL) -> None:
    if url.scheme not in ("http", "https"):
        raise IngestRefused(f"only http and https URLs are ingested, not {url.scheme or 'this'}:")


def _default_name(url: httpx.URL) -> str:
    last = unquote(url.path.rstrip("/").rsplit("/", 1)[-1])
    return last or url.host or "output"


def _status_error(response: httpx.Response) -> Exception:
    text = f"{response.url} answered HTTP {response.status_code} {response.reason_phrase}"
    if response.status_code >= 500 or response.status_code in RETRYABLE_STATUSES:
        return IngestError(text)
    return IngestRefused(text)


async def _open(client: httpx.AsyncClient, url: httpx.URL) -> httpx.Response:
    """GET `url`, following redirects one validated hop at a time."""
    request = client.build_request("GET", url)
    for _ in range(MAX_REDIRECTS + 1):
        _check_scheme(request.url)
        response = await client.send(request, stream=True)
        if response.next_request is None:
            return response
        await response.aclose()
        request = response.next_request
    raise IngestRefused(f"more than {MAX_REDIRECTS} redirects from {url}")


async def ingest_url(
    ctx: JobContext,
    url: Annotated[
        str, Field(description="an http or https URL", examples=["https://example.com/"])
    ],
    name: Annotated[
        str | None, Field(description="the artifact's name; default: the URL's last segment")
    ] = None,
    max_bytes: Annotated[
        int | None, Field(ge=0, description="refuse a body over this (the operator's cap holds)")
    ] = None,
) -> dict[str, Any]:
    """Stream `url`'s body into this job's storage as `name` (default: the URL's last path
    segment), refusing more than `max_bytes`. `CONVEYOR_INGEST_MAX_BYTES` is the operator's
    cap: a payload's `max_bytes` may lower it, never raise it.

    Two steps: `fetch` (download and upload, the long one) and `verify` (the object is in
    S3, whole). A retry after a failed `verify`, or a crash after `fetch`, does not download
    again: the stored artifact is the fetch step's recorded result."""
    settings: Settings = ctx.get("settings") or get_settings()
    limit = settings.ingest_max_bytes
    if max_bytes is not None:
        limit = min(limit, max_bytes)
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise IngestRefused(f"not a URL: {exc}") from exc
    _check_scheme(target)
    artifact: Artifact = await ctx.step("fetch", _fetch, ctx, settings, target, name, limit)
    return await ctx.step("verify", _verify, ctx, artifact)  # type: ignore[no-any-return]


async def _fetch(
    ctx: JobContext, settings: Settings, target: httpx.URL, name: str | None, limit: int
) -> Artifact:
    timeout = httpx.Timeout(
        connect=settings.ingest_connect_timeout_s,
        read=settings.ingest_read_timeout_s,
        write=settings.ingest_read_timeout_s,
        pool=settings.ingest_connect_timeout_s,
    )
    transport = _GuardedTransport(settings.ingest_allowed_hosts)
    # identity: what is stored is the resource itself, and max_bytes counts what is stored.
    headers = {"Accept-Encoding": "identity", "User-Agent": "conveyor-ingest/1"}
    await ctx.progress(0, stage="downloading", message=f"connecting to {target.host}")
    try:
        async with httpx.AsyncClient(
            transport=transport, timeout=timeout, headers=headers, trust_env=False
        ) as client:
            response = await _open(client, target)
            try:
                if not response.is_success:
                    raise _status_error(response)
                artifact = await ctx.storage.upload(
                    name or _default_name(response.url),
                    _body(ctx, response, limit),
                    response.headers.get("content-type", "application/octet-stream"),
                )
            finally:
                await response.aclose()
    except httpx.UnsupportedProtocol as exc:
        raise IngestRefused(str(exc)) from exc
    except httpx.HTTPError as exc:  # network, timeouts, protocol errors
        raise IngestError(f"fetching {target} failed: {type(exc).__name__}: {exc}") from exc
    await ctx.progress(100, stage="downloading", message=f"{artifact.size} bytes stored")
    return artifact


async def _verify(ctx: JobContext, artifact: Artifact) -> dict[str, Any]:
    """The stored object is there, whole: what the job's result then records."""
    await ctx.storage.verify(artifact)
    return {
        "artifact": artifact.name,
        "key": artifact.key,
        "size": artifact.size,
        "sha256": artifact.sha256,
        "content_type": artifact.content_type,
    }


async def _body(ctx: JobContext, response: httpx.Response, limit: int) -> AsyncIterator[bytes]:
    """The response body, counted against `limit` and reported as `downloading` progress."""
    total = _content_length(response)
    if total is not None and total > limit:
        raise IngestRefused(f"{response.url} is {total} bytes, over the limit of {limit}")
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > limit:
            raise IngestRefused(f"{response.url} sent more than the limit of {limit} bytes")
        percent = None if not total else min(99.9, 100 * received / total)
        await ctx.progress(percent, stage="downloading", message=f"{received} bytes")
        yield chunk


def _content_length(response: httpx.Response) -> int | None:
    try:
        length = int(response.headers.get("content-length", ""))
    except ValueError:
        return None
    return length if length >= 0 else None
