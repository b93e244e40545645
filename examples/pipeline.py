"""A multi-step pipeline (README, "Multi-step jobs"): download → checksum → transcode, each
a step of one job. From the repository's root, beside `make run`:

    .venv/bin/conveyor worker --handlers examples.pipeline
    .venv/bin/conveyor submit pipeline --wait \\
        --payload '{"url": "https://example.com/", "fail_transcode": 1}'

`fail_transcode` makes the transcode step fail on the first attempts: watch the retry get
the download and the checksum back (`job.step ... state="restored"`) instead of running them
again. The "transcode" is a stand-in (it upper-cases the bytes), streamed from S3 to S3.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx

from consumers.context import JobContext
from consumers.errors import PermanentError, RetryableError
from consumers.handlers import BUILTIN_FUNCTIONS
from schemas.models import Artifact


async def pipeline(ctx: JobContext, url: str, fail_transcode: int = 0) -> dict[str, Any]:
    source = await ctx.step("download", download, ctx, url)
    digest = await ctx.step("checksum", checksum, ctx, source)
    output = await ctx.step("transcode", transcode, ctx, source, fail_transcode)
    return {"source": source.key, "sha256": digest, "output": output.key, "size": output.size}


async def download(ctx: JobContext, url: str) -> Artifact:
    """The long step: the URL's body streamed into S3. Its result is the `Artifact`, so a
    later attempt gets the stored object back instead of downloading it again. (A URL your
    users choose needs the built-in `ingest_url`'s guard against private addresses.)"""
    async with (
        httpx.AsyncClient(timeout=30, follow_redirects=True) as client,
        client.stream("GET", url) as response,
    ):
        if response.is_client_error:
            raise PermanentError(f"{url} answered {response.status_code}")
        response.raise_for_status()  # 5xx: retried
        content_type = response.headers.get("content-type", "application/octet-stream")
        return await ctx.storage.upload("source", response.aiter_bytes(), content_type)


async def checksum(ctx: JobContext, source: Artifact) -> str:
    """Reads the stored object back and checks it is what the upload measured."""
    digest = hashlib.sha256()
    async for chunk in ctx.storage.read(source):
        digest.update(chunk)
    if digest.hexdigest() != source.sha256:
        raise RetryableError("the stored object does not match what was uploaded")
    return digest.hexdigest()


async def transcode(ctx: JobContext, source: Artifact, fail_attempts: int) -> Artifact:
    if ctx.attempt <= fail_attempts:
        raise RetryableError(f"transcoder unavailable (attempt {ctx.attempt})")

    async def transformed() -> AsyncIterator[bytes]:
        async for chunk in ctx.storage.read(source):
            yield chunk.upper()

    return await ctx.storage.upload("transcoded", transformed(), source.content_type)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [*BUILTIN_FUNCTIONS, pipeline]
