"""`ingest_url`: a URL's body streamed into S3, and the SSRF guard in front of it.

Every request goes to a server on 127.0.0.1 started here; refused targets are refused before
any packet leaves (the server's request log shows it), and non-loopback addresses are only
ever given to the classifier, never connected to.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest

from consumers.handlers.ingest import (
    IngestError,
    IngestRefused,
    _GuardedBackend,
    blocked_reason,
    ingest_url,
)
from consumers.registry import declare
from consumers.storage import MIN_PART_SIZE, JobStorage, Storage
from conveyor.process import free_port
from schemas.errors import InvalidPayload
from schemas.settings import Settings
from tests.fixtures.origin import Origin, body_of

pytestmark = pytest.mark.integration


@dataclass
class FakeCtx:
    """What `ingest_url` uses of a JobContext; records progress instead of sending it."""

    storage: JobStorage
    settings: Settings
    job_id: str = "job"
    attempt: int = 1
    progress_calls: list[tuple[float | None, str | None]] = field(default_factory=list)
    on_progress: asyncio.Event = field(default_factory=asyncio.Event)

    async def progress(
        self, percent: float | None = None, stage: str | None = None, message: str | None = None
    ) -> None:
        self.progress_calls.append((percent, stage))
        self.on_progress.set()

    def get(self, name: str, default: Any = None) -> Any:
        return self.settings if name == "settings" else default

    async def step(self, name: str, fn: Any, *args: Any) -> Any:
        """Steps run as they come (their recording is tested in test_steps.py)."""
        return await fn(*args)

    def __getitem__(self, name: str) -> Any:
        return self.get(name)


def make_settings(allowed: list[str] | None = None, **overrides: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        ingest_allowed_hosts=allowed or [],
        ingest_max_bytes=overrides.pop("ingest_max_bytes", 64 * 1024 * 1024),
        ingest_connect_timeout_s=5,
        ingest_read_timeout_s=10,
        **overrides,
    )


@pytest.fixture
def make_ctx(storage: Storage, s3_queue: str) -> Any:
    def make(allowed: list[str] | None = None, **overrides: Any) -> FakeCtx:
        return FakeCtx(JobStorage(storage, s3_queue, "job"), make_settings(allowed, **overrides))

    return make


async def test_ingests_a_body_with_progress(
    make_ctx: Any, origin: Origin, storage: Storage
) -> None:
    size = MIN_PART_SIZE * 2 + 12345
    ctx = make_ctx(["127.0.0.1"])
    result = await ingest_url(ctx, f"{origin.base}/bytes/{size}", name="clip.bin")

    assert result["artifact"] == "clip.bin"
    assert result["size"] == size
    assert result["sha256"] == hashlib.sha256(body_of(size)).hexdigest()
    [artifact] = ctx.storage.artifacts
    assert artifact.content_type == "application/x-test"
    percents = [p for p, stage in ctx.progress_calls if stage == "downloading"]
    assert len(percents) == len(ctx.progress_calls) > 3
    assert percents == sorted(percents) and percents[-1] == 100
    assert any(p is not None and 0 < p < 100 for p in percents)


async def test_unknown_length_reports_bytes_without_percent(make_ctx: Any, origin: Origin) -> None:
    ctx = make_ctx(["127.0.0.1"])
    result = await ingest_url(ctx, f"{origin.base}/stream/300000")
    assert result["size"] == 300000
    assert result["artifact"] == "300000"  # the URL's last path segment
    middle = ctx.progress_calls[1:-1]
    assert middle and all(p is None for p, _ in middle)


async def test_redirect_within_allowed_host_is_followed(make_ctx: Any, origin: Origin) -> None:
    ctx = make_ctx(["127.0.0.1"])
    result = await ingest_url(ctx, f"{origin.base}/redirect?to=/bytes/1000", name="r")
    assert result["size"] == 1000
    assert origin.paths == ["/redirect?to=/bytes/1000", "/bytes/1000"]


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "localhost", "127.1", "0.0.0.0"])
async def test_loopback_refused_by_default(make_ctx: Any, origin: Origin, host: str) -> None:
    port = origin.server_address[1]
    with pytest.raises(IngestRefused, match="refusing to fetch"):
        await ingest_url(make_ctx(), f"http://{host}:{port}/bytes/10")
    assert origin.paths == []  # refused before connecting


async def test_an_allowed_host_port_entry_allows_that_port_only(
    make_ctx: Any, origin: Origin
) -> None:
    port = origin.server_address[1]
    for entry in [f"127.0.0.1:{port}", f"[127.0.0.1]:{port}"]:
        result = await ingest_url(make_ctx([entry]), f"{origin.base}/bytes/10", name="x")
        assert result["size"] == 10
    with pytest.raises(IngestRefused, match="refusing to fetch"):
        await ingest_url(make_ctx([f"127.0.0.1:{port + 1}"]), f"{origin.base}/bytes/10")
    assert origin.paths == ["/bytes/10", "/bytes/10"]


@pytest.mark.parametrize("target", ["http://localhost:{port}/bytes/10", "http://[::1]:{port}/"])
async def test_redirect_to_loopback_refused(make_ctx: Any, origin: Origin, target: str) -> None:
    to = target.format(port=origin.server_address[1])
    with pytest.raises(IngestRefused, match="loopback"):
        await ingest_url(make_ctx(["127.0.0.1"]), f"{origin.base}/redirect?to={to}")
    assert origin.paths == [f"/redirect?to={to}"]  # the second hop never left


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1/", "not a url"]
)
async def test_other_schemes_refused(make_ctx: Any, url: str) -> None:
    with pytest.raises(IngestRefused):
        await ingest_url(make_ctx(["127.0.0.1"]), url)


async def test_redirect_to_file_scheme_refused(make_ctx: Any, origin: Origin) -> None:
    with pytest.raises(IngestRefused, match="only http and https"):
        await ingest_url(make_ctx(["127.0.0.1"]), f"{origin.base}/redirect?to=file:///etc/passwd")


async def test_resolved_address_is_what_is_checked() -> None:
    """A public-looking name that resolves to loopback (DNS rebinding) is refused."""

    class Rebinding(_GuardedBackend):
        async def _resolve(self, host: str, port: int, limit_s: float | None) -> list[Any]:
            return [ipaddress.ip_address("127.0.0.1")]

    with pytest.raises(IngestRefused, match=r"example\.com"):
        await Rebinding([]).connect_tcp("example.com", 80, timeout=1)


async def test_content_length_over_limit_refused_before_upload(
    make_ctx: Any, origin: Origin, storage: Storage, s3_queue: str
) -> None:
    ctx = make_ctx(["127.0.0.1"])
    with pytest.raises(IngestRefused, match="over the limit"):
        await ingest_url(ctx, f"{origin.base}/bytes/5000", max_bytes=4999)
    assert ctx.storage.artifacts == []


async def test_streamed_body_over_limit_refused_and_upload_aborted(
    make_ctx: Any, origin: Origin, storage: Storage, s3_queue: str
) -> None:
    ctx = make_ctx(["127.0.0.1"], ingest_max_bytes=MIN_PART_SIZE + 100_000)
    with pytest.raises(IngestRefused, match="more than the limit"):
        await ingest_url(ctx, f"{origin.base}/stream/{2 * MIN_PART_SIZE}")
    assert ctx.storage.artifacts == []
    assert await storage.list_open_uploads(f"{s3_queue}/") == []


@pytest.mark.parametrize("path", ["bytes", "stream"])
async def test_a_payload_max_bytes_cannot_raise_the_operators_cap(
    make_ctx: Any, origin: Origin, storage: Storage, s3_queue: str, path: str
) -> None:
    """With and without a Content-Length: the payload asks for 10x the cap and gets the cap."""
    cap = 100_000
    ctx = make_ctx(["127.0.0.1"], ingest_max_bytes=cap)
    with pytest.raises(IngestRefused, match="limit"):
        await ingest_url(ctx, f"{origin.base}/{path}/{cap + 1}", max_bytes=10 * cap)
    assert ctx.storage.artifacts == []
    assert await storage.list_open_uploads(f"{s3_queue}/") == []
    # Lowering it still works, and a body within both limits is ingested whole.
    with pytest.raises(IngestRefused, match="limit"):
        await ingest_url(ctx, f"{origin.base}/{path}/1001", max_bytes=1000)
    assert (await ingest_url(ctx, f"{origin.base}/{path}/{cap}", max_bytes=10 * cap))["size"] == cap


@pytest.mark.parametrize("bad", ["lots", -1, [1], 1.5])
def test_a_max_bytes_that_is_not_a_whole_number_is_refused(bad: Any) -> None:
    """By the payload's model, before the handler runs (at the gateway, and in the worker)."""
    payload = declare(ingest_url).payload
    with pytest.raises(InvalidPayload, match=r"^payload\.max_bytes: "):
        payload.arguments("ingest_url", {"url": "http://127.0.0.1:1/x", "max_bytes": bad})


@pytest.mark.parametrize(
    "status,error",
    [(404, IngestRefused), (403, IngestRefused), (503, IngestError), (429, IngestError)],
)
async def test_non_2xx_fails_with_the_status(
    make_ctx: Any, origin: Origin, status: int, error: type[Exception]
) -> None:
    with pytest.raises(error, match=f"HTTP {status}"):
        await ingest_url(make_ctx(["127.0.0.1"]), f"{origin.base}/status/{status}")


async def test_connection_refused_is_retryable(make_ctx: Any) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(IngestError, match="ConnectError"):
        await ingest_url(make_ctx(["127.0.0.1"]), f"http://127.0.0.1:{port}/bytes/1")


async def test_cancel_mid_download_aborts_the_upload(
    make_ctx: Any, origin: Origin, storage: Storage, s3_queue: str
) -> None:
    ctx = make_ctx(["127.0.0.1"])
    sent = MIN_PART_SIZE + 200_000  # more than a part: the multipart upload is open
    task = asyncio.create_task(ingest_url(ctx, f"{origin.base}/stall/{sent}", name="s"))
    async with asyncio.timeout(20):
        while True:  # each progress report is a chance that the upload has been opened
            ctx.on_progress.clear()
            if await storage.list_open_uploads(f"{s3_queue}/"):
                break
            await ctx.on_progress.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await storage.list_open_uploads(f"{s3_queue}/") == []


@pytest.mark.parametrize(
    "address,reason",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not globally routable"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
    ],
)
def test_classifier_blocks(address: str, reason: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_classifier_allows_public(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None
