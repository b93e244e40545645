"""Streaming job output into S3 without holding it: the only module that imports `minio`.

An upload reads the handler's async iterator into part-sized buffers and sends each full buffer
as one part of a multipart upload while the next one fills. Memory is `parallel_parts + 1`
buffers whatever the size (default 2 + 1 parts of 8 MiB: 24 MiB); `parallel_parts=1` holds
strictly two. Two parts in flight rather than one is what keeps pace with minio's own
`put_object` (three parallel parts) on SeaweedFS, see bench/ingest.py. The buffers are reused,
never copied out: urllib3 sends a memoryview as is. sha256 and size are computed on the way,
the hash in one dedicated thread so parts are hashed in order while they upload in parallel.
The `minio` client is blocking: every call runs in a thread, never on the event loop.

The seam with minio (7.2): its public `put_object` wants a stream of known length or buffers
parts itself, so the multipart calls are its private per-request methods, which map one-to-one
onto the S3 API and have kept their signatures across 7.x:

    Minio._create_multipart_upload(bucket, key, headers) -> upload_id
    Minio._upload_part(bucket, key, data, headers, upload_id, part_number) -> etag
    Minio._complete_multipart_upload(bucket, key, upload_id, [Part]) -> result (.etag)
    Minio._abort_multipart_upload(bucket, key, upload_id)
    Minio._list_multipart_uploads(bucket, prefix=..., key_marker=...) -> result (.uploads)
    Minio._put_object(bucket, key, data, headers) -> result (.etag)   (bodies under one part)

`data` may be any buffer: minio only takes its length and sha256 and hands it to urllib3.
minio's own urllib3 retries are switched off (we pass our own PoolManager): retrying here, per
request, keeps the time an S3 outage costs bounded and known, and lets a cancel interrupt it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import random
import re
import unicodedata
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.error import InvalidResponseError, S3Error, ServerError

from consumers.errors import RetryableError
from schemas.models import Artifact
from schemas.settings import Settings

__all__ = ["JobStorage", "OpenUpload", "Storage", "StorageError", "object_key", "safe_name"]

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's floor for every part but the last
MAX_NAME_BYTES = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# S3 error codes that mean "try again", whatever the HTTP status carried them.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "Throttling",
        "RequestTimeTooSkewed",
        "OperationAborted",
    }
)


_HASHING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conveyor-sha256")


def _host_and_tls(endpoint: str, secure: bool) -> tuple[str, bool]:
    """Accept `host:port` or a URL (`http://minio:9000`), as minio wants a bare host."""
    if "://" in endpoint:
        url = urlsplit(endpoint)
        return url.netloc, url.scheme == "https"
    return endpoint, secure


class StorageError(RetryableError):
    """S3 failed (or stayed down through the retries): the attempt fails, the job may retry."""


@dataclass(frozen=True)
class OpenUpload:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str


def safe_name(name: str) -> str:
    """An artifact name that is one harmless key segment: it cannot add a `/`, climb with
    `..`, carry control characters or grow without bound, whatever a client sent."""
    name = unicodedata.normalize("NFKC", name)
    name = _UNSAFE.sub("_", name)
    name = re.sub(r"\.{2,}", ".", name).strip("._-") or "output"
    if len(name) > MAX_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:16] if dot and stem else ""
        name = name[: MAX_NAME_BYTES - len(ext) - 1].rstrip("._-") + ("." + ext if ext else "")
    return name


def object_key(queue: str, job_id: str, name: str) -> str:
    """`{queue}/{job_id}/{name}`: derived from the job, so a re-run overwrites its own output."""
    for what, segment in (("queue", queue), ("job id", job_id)):
        if not _SEGMENT.match(segment) or set(segment) == {"."}:
            raise ValueError(f"{what} {segment!r} cannot be an object key segment")
    return f"{queue}/{job_id}/{safe_name(name)}"


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, ServerError):
        return exc.status_code >= 500
    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_CODES or exc.response.status >= 500
    if isinstance(exc, InvalidResponseError):  # e.g. a proxy's HTML 502 page
        return int(exc._code) >= 500  # minio exposes no accessor
    return False


async def _in_thread(fn: Callable[..., T], /, *args: Any) -> T:
    """Run a blocking call in the default executor. If we are cancelled meanwhile, wait for
    the thread before re-raising: it cannot be interrupted, and a part that lands after our
    abort would leave an upload open again."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved, so asyncio does not log it as lost
        raise


class _PartReader:
    """Cuts an async byte stream into parts, rotating through `buffers` reusable buffers.

    A part returned by `next()` stays valid for the next `buffers - 1` calls: the caller
    sends up to that many parts while this fills the following one."""

    def __init__(self, chunks: AsyncIterable[bytes], part_size: int, buffers: int) -> None:
        self._chunks: AsyncIterator[bytes] = aiter(chunks)
        self._part_size = part_size
        self._count = buffers
        self._buffers: list[bytearray] = []
        self._turn = 0
        self._pending = memoryview(b"")
        self._done = False
        self.size = 0

    @property
    def exhausted(self) -> bool:
        return self._done and not self._pending

    async def next(self) -> memoryview:
        if len(self._buffers) <= self._turn:
            self._buffers.append(bytearray(self._part_size))
        view = memoryview(self._buffers[self._turn])
        self._turn = (self._turn + 1) % self._count
        filled = 0
        while filled < self._part_size:
            if not self._pending:
                if self._done:
                    break
                try:
                    self._pending = memoryview(await anext(self._chunks))
                except StopAsyncIteration:
                    self._done = True
                    break
                continue
            take = min(len(self._pending), self._part_size - filled)
            view[filled : filled + take] = self._pending[:take]
            self._pending = self._pending[take:]
            filled += take
        self.size += filled
        return view[:filled]


class Storage:
    """One bucket on one S3 endpoint, shared by every job of a worker process."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str = "us-east-1",
        part_size: int = 8 * 1024 * 1024,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        tries: int = 4,
        backoff_s: float = 0.25,
        parallel_parts: int = 2,
        public_endpoint: str | None = None,
    ) -> None:
        endpoint, secure = _host_and_tls(endpoint, secure)
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part size {part_size} is under S3's minimum of {MIN_PART_SIZE}")
        self.bucket = bucket
        self.part_size = part_size
        self.parallel_parts = max(1, parallel_parts)
        self.tries = max(1, tries)
        self.backoff_s = backoff_s
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            maxsize=16,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )

        def client(host: str, tls: bool) -> Minio:
            # With the region given, presigning is pure computation (no location request).
            return Minio(
                host,
                access_key=access_key,
                secret_key=secret_key,
                secure=tls,
                region=region,
                http_client=self._http,
            )

        self._client = client(endpoint, secure)
        # Presigned URLs sign the host, so a browser-facing host needs a client of its own.
        self._presigner = (
            client(*_host_and_tls(public_endpoint, secure)) if public_endpoint else self._client
        )
        self._unaborted: set[OpenUpload] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        if not settings.s3_endpoint:
            raise ValueError("CONVEYOR_S3_ENDPOINT is not set")
        return cls(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            bucket=settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
            part_size=settings.s3_part_size,
            parallel_parts=settings.s3_parallel_parts,
            public_endpoint=settings.s3_public_endpoint,
        )

    def close(self) -> None:
        self._http.clear()

    # -- bucket and housekeeping ---------------------------------------------------------

    def ensure_bucket_sync(self) -> None:
        """Create the bucket if it is missing (blocking: for start-up code outside a loop)."""
        if self._client.bucket_exists(self.bucket):
            return
        try:
            self._client.make_bucket(self.bucket)
        except S3Error as exc:  # another process created it first
            if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise

    async def ensure_bucket(self) -> None:
        await self._call("create the bucket", self.ensure_bucket_sync)

    async def list_open_uploads(self, prefix: str) -> list[OpenUpload]:
        """Multipart uploads under `prefix` still open: what a failed upload must not leave."""

        def list_all() -> list[OpenUpload]:
            found: list[OpenUpload] = []
            marker: str | None = None
            for _ in range(1000):  # bounded, whatever the server says about truncation
                page = self._client._list_multipart_uploads(
                    self.bucket, prefix=prefix, key_marker=marker
                )
                found += [OpenUpload(u.object_name, u.upload_id or "") for u in page.uploads]
                if not page.is_truncated or not page.next_key_marker:
                    break
                marker = page.next_key_marker
            return found

        return await self._call("list multipart uploads", list_all)

    async def abort_open_uploads(self, prefix: str) -> int:
        """Abort every open multipart upload under `prefix`; returns how many."""
        uploads = await self.list_open_uploads(prefix)
        for upload in uploads:
            await self._abort(upload)
        return len(uploads)

    async def size_of(self, key: str) -> int | None:
        """The stored object's size in bytes; None when there is no such object."""
        try:
            stat = await self._call(
                "read an object's size", self._client.stat_object, self.bucket, key
            )
        except StorageError as exc:
            if isinstance(exc.__cause__, S3Error) and exc.__cause__.code == "NoSuchKey":
                return None
            raise
        return int(stat.size or 0)

    async def read(self, key: str, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        """The stored object's bytes, a chunk at a time: a step reads an earlier step's
        output back without holding it in memory."""
        response = await self._call("read an object", self._client.get_object, self.bucket, key)
        try:
            while chunk := await _in_thread(response.read, chunk_size):
                yield chunk
        finally:
            response.close()
            response.release_conn()

    def presigned_get_url(self, key: str, expires_s: int) -> str:
        return self._presigner.presigned_get_object(
            self.bucket, key, expires=timedelta(seconds=expires_s)
        )

    # -- upload --------------------------------------------------------------------------

    async def upload(
        self,
        queue: str,
        job_id: str,
        name: str,
        chunks: AsyncIterable[bytes],
        content_type: str = "application/octet-stream",
    ) -> Artifact:
        """Stream `chunks` to `{queue}/{job_id}/{name}` and describe what was written.

        Errors of the stream itself (the handler's) propagate unchanged; S3 failures that
        outlast the retries raise `StorageError`. Either way, and on cancellation, the
        multipart upload is aborted before the exception leaves."""
        key = object_key(queue, job_id, name)
        await self._reap(key)
        reader = _PartReader(chunks, self.part_size, buffers=self.parallel_parts + 1)
        hasher = hashlib.sha256()
        headers = {"Content-Type": content_type}

        part = await reader.next()
        if reader.exhausted:  # under one part: a single PUT
            await _in_thread(hasher.update, part)
            body = bytes(part)
            put = await self._call(
                "put the object", self._client._put_object, self.bucket, key, body, headers
            )
            etag = put.etag or ""
        else:
            etag = await self._multipart(key, headers, reader, part, hasher)
        return Artifact(
            name=key.rsplit("/", 1)[1],
            bucket=self.bucket,
            key=key,
            size=reader.size,
            sha256=hasher.hexdigest(),
            etag=etag,
            content_type=content_type,
        )

    async def _multipart(
        self,
        key: str,
        headers: dict[str, str],
        reader: _PartReader,
        part: memoryview,
        hasher: Any,
    ) -> str:
        upload = await self._open(key, headers)
        loop = asyncio.get_running_loop()
        sent: list[Part] = []
        sending: deque[asyncio.Task[Part]] = deque()
        try:
            while part:
                # One hashing thread takes the parts in the order they are submitted, so the
                # running sha256 is right while parts upload in parallel.
                hashed = loop.run_in_executor(_HASHING, hasher.update, part)
                number = len(sent) + len(sending) + 1
                sending.append(asyncio.create_task(self._send_part(upload, number, part, hashed)))
                if reader.exhausted:
                    break
                while len(sending) > self.parallel_parts:
                    await self._collect(sending, sent)  # frees the buffer read next
                part = await reader.next()
            while sending:
                await self._collect(sending, sent)
            result = await self._call(
                "complete the multipart upload",
                self._client._complete_multipart_upload,
                self.bucket,
                key,
                upload.upload_id,
                sent,
            )
        except BaseException:
            for task in sending:
                task.cancel()
            if sending:
                await asyncio.wait(sending)
                for task in sending:
                    if not task.cancelled():
                        task.exception()  # retrieved: the first failure is what we raise
            # Shielded: a second cancel (a timeout on top of a cancel) must not skip it.
            await asyncio.shield(self._abort(upload))
            raise
        return result.etag or ""

    async def _open(self, key: str, headers: dict[str, str]) -> OpenUpload:
        """Start a multipart upload. A cancel can land after S3 has created the upload and
        before its id reaches us; the request then runs to the end and what it opened is
        aborted, or the cancelled job would leave it open on the server."""
        opening = asyncio.ensure_future(
            self._call(
                "start the multipart upload",
                self._client._create_multipart_upload,
                self.bucket,
                key,
                dict(headers),
            )
        )
        try:
            return OpenUpload(key, await asyncio.shield(opening))
        except asyncio.CancelledError:
            await asyncio.wait([opening])
            if not opening.cancelled() and opening.exception() is None:
                await asyncio.shield(self._abort(OpenUpload(key, opening.result())))
            raise

    @staticmethod
    async def _collect(sending: deque[asyncio.Task[Part]], sent: list[Part]) -> None:
        # Popped only once done: if we are cancelled while waiting, the task is still in
        # `sending`, where the abort path waits for it.
        sent.append(await sending[0])
        sending.popleft()

    async def _send_part(
        self, upload: OpenUpload, number: int, data: memoryview, hashed: asyncio.Future[None]
    ) -> Part:
        try:
            etag = await self._call(
                f"upload part {number}",
                self._client._upload_part,
                self.bucket,
                upload.key,
                data,
                None,
                upload.upload_id,
                number,
            )
        finally:
            # The buffer is refilled once this task is done: the hash must have read it.
            await asyncio.wait([hashed])
        hashed.result()
        return Part(number, etag)

    async def _abort(self, upload: OpenUpload) -> None:
        try:
            await self._call(
                "abort the multipart upload",
                self._client._abort_multipart_upload,
                self.bucket,
                upload.key,
                upload.upload_id,
            )
        except StorageError as exc:
            if isinstance(exc.__cause__, S3Error) and exc.__cause__.code == "NoSuchUpload":
                self._unaborted.discard(upload)
                return
            # S3 is unreachable: remembered here, and the next upload of this key (the job's
            # retry) aborts it, so an outage does not leave parts behind for good.
            self._unaborted.add(upload)
            log.warning(
                "could not abort multipart upload %s of %s: %s", upload.upload_id, upload.key, exc
            )
        else:
            self._unaborted.discard(upload)

    async def _reap(self, key: str) -> None:
        """Abort what an earlier attempt at `key` (here or in a dead process) left open."""
        for upload in [u for u in self._unaborted if u.key == key]:
            await self._abort(upload)
        for upload in await self.list_open_uploads(key):
            if upload.key == key:
                await self._abort(upload)

    async def _call(self, what: str, fn: Callable[..., T], /, *args: Any) -> T:
        """One S3 request with bounded retries of transient failures (exponential backoff,
        jitter); whatever is left becomes a `StorageError` naming the operation."""
        for attempt in range(1, self.tries + 1):
            try:
                return await _in_thread(fn, *args)
            except Exception as exc:
                if not _is_transient(exc) or attempt == self.tries:
                    again = f" after {attempt} tries" if attempt > 1 else ""
                    raise StorageError(f"S3 could not {what}{again}: {exc}") from exc
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.info("S3 could not %s (%s); retrying in %.2fs", what, exc, delay)
                await asyncio.sleep(random.uniform(delay / 2, delay))
        raise AssertionError("unreachable")


class JobStorage:
    """What a handler sees as `ctx.storage`: uploads under its own job's prefix, and the
    list of what it wrote, which the worker records on the job when it succeeds."""

    def __init__(self, storage: Storage, queue: str, job_id: str) -> None:
        self.storage = storage
        self.queue = queue
        self.job_id = job_id
        self.artifacts: list[Artifact] = []

    async def upload(
        self,
        name: str,
        chunks: AsyncIterable[bytes],
        content_type: str = "application/octet-stream",
    ) -> Artifact:
        artifact = await self.storage.upload(self.queue, self.job_id, name, chunks, content_type)
        self.keep(artifact)
        return artifact

    def read(self, artifact: Artifact) -> AsyncIterator[bytes]:
        """Stream a stored artifact back (one an earlier step of this job uploaded)."""
        return self.storage.read(artifact.key)

    async def verify(self, artifact: Artifact) -> None:
        """Check that `artifact` (uploaded by this job, perhaps by an earlier attempt's step)
        is still stored whole: a `StorageError` if it is missing or of another size."""
        size = await self.storage.size_of(artifact.key)
        if size != artifact.size:
            found = "missing" if size is None else f"{size} bytes"
            raise StorageError(f"{artifact.key}: expected {artifact.size} bytes, found {found}")

    def keep(self, artifact: Artifact) -> None:
        """Record `artifact` as this job's: one it uploaded now, or one a step of an earlier
        attempt uploaded and this attempt restored. Same name, same key: a second upload
        replaced the object, so it replaces the entry."""
        self.artifacts = [a for a in self.artifacts if a.name != artifact.name] + [artifact]

    def __repr__(self) -> str:
        return f"<JobStorage {self.queue}/{self.job_id} artifacts={len(self.artifacts)}>"
