"""`GET /v1/jobs`: a tenant's jobs newest first, from the per-queue index zsets
(`QueueKeys.tenant_jobs`, scored by creation ms), merged across queues.

The cursor is the position (score, job id) of the last index entry examined, in
(score desc, id desc) order -- Redis's own order for ZREVRANGEBYSCORE -- so a page resumes
strictly after it: no job is missed or repeated, whatever is submitted meanwhile. Filters are
applied to the snapshots; a request examines at most SCAN_BUDGET entries and may return a
short page with a cursor, so a rare filter never makes one request slow.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from schemas.keys import QueueKeys
from schemas.models import Job
from schemas.status import JobStatus

SCAN_BUDGET = 2000


@dataclass(frozen=True, order=True, slots=True)
class Position:
    score: int
    job_id: str


def encode_cursor(position: Position) -> str:
    raw = json.dumps([position.score, position.job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> Position:
    """Raises ValueError for anything that is not a cursor we issued."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        score, job_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError("not a valid cursor") from exc
    if not isinstance(score, int) or not isinstance(job_id, str) or isinstance(score, bool):
        raise ValueError("not a valid cursor")
    return Position(score, job_id)


@dataclass(frozen=True, slots=True)
class Page:
    jobs: list[Job]
    next: Position | None


async def _before(redis: Redis, key: str, after: Position | None, count: int) -> list[Position]:
    """Up to `count` index entries strictly after `after`, in page order."""
    if after is None:
        rows = await redis.zrevrangebyscore(
            key, "+inf", "-inf", start=0, num=count, withscores=True
        )
        return [Position(int(score), member) for member, score in rows]
    ties = await redis.zrangebyscore(key, after.score, after.score)
    same = sorted((m for m in ties if m < after.job_id), reverse=True)[:count]
    rows = await redis.zrevrangebyscore(
        key, f"({after.score}", "-inf", start=0, num=count, withscores=True
    )
    return [Position(after.score, m) for m in same] + [
        Position(int(score), member) for member, score in rows
    ]


async def list_jobs(
    redis: Redis,
    keys: Sequence[QueueKeys],
    tenant: str,
    *,
    limit: int,
    after: Position | None = None,
    status: JobStatus | None = None,
    job_type: str | None = None,
) -> Page:
    filtered = status is not None or job_type is not None
    batch = max(limit + 1, 100) if filtered else limit + 1
    found: list[tuple[Position, Job]] = []
    position = after
    scanned = 0
    while True:
        candidates: list[tuple[Position, QueueKeys]] = []
        for k in keys:
            candidates += [
                (p, k) for p in await _before(redis, k.tenant_jobs(tenant), position, batch)
            ]
        if not candidates:
            return Page([job for _, job in found], None)
        candidates.sort(key=lambda c: c[0], reverse=True)
        candidates = candidates[:batch]
        async with redis.pipeline(transaction=False) as pipe:
            for p, k in candidates:
                pipe.hgetall(k.job(p.job_id))
            hashes = await pipe.execute()
        for (p, _), fields in zip(candidates, hashes, strict=True):
            position = p
            scanned += 1
            if not fields:  # expired: its index entry outlived it
                continue
            job = Job.from_hash(fields)
            if job.tenant != tenant:
                continue
            if (status is None or job.status is status) and (
                job_type is None or job.type == job_type
            ):
                found.append((p, job))
                if len(found) > limit:
                    return Page([job for _, job in found[:limit]], found[limit - 1][0])
        if scanned >= SCAN_BUDGET:
            return Page([job for _, job in found], position)
