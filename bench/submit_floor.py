"""The floor under `POST /v1/jobs`: a bare ASGI app on the gateway's own server stack
(uvicorn, httptools, uvloop) that does the least a submit must do: parse the JSON body,
run one Lua script (HSET of the job's hash, XADD to the jobs stream) and answer 202 with a
small JSON body. No auth, validation, idempotency, events or metrics: what is left of the
gateway's time over this one is the price of those (bench.http_submit compares the two).

    uvicorn bench.submit_floor:app_from_env --factory   # CONVEYOR_REDIS_URL, as the gateway
"""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import Any

from redis.asyncio import Redis
from starlette.types import Receive, Scope, Send

SCRIPT = """
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'type', ARGV[2], 'payload', ARGV[3],
  'status', 'queued', 'created_at', ARGV[4])
return redis.call('XADD', KEYS[2], '*', 'job_id', ARGV[1], 'type', ARGV[2])
"""
HEADERS = [(b"content-type", b"application/json")]


class Floor:
    def __init__(self, redis_url: str) -> None:
        self.redis = Redis.from_url(redis_url)
        self.sha = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            self.sha = await self.redis.script_load(SCRIPT)
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            await self.redis.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body: dict[str, Any] = json.loads(b"".join(chunks))
        job_id = f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"
        payload = json.dumps(body.get("payload"), separators=(",", ":"))
        entry = await self.redis.evalsha(
            self.sha, 2, f"floor:job:{job_id}", "floor:jobs",
            job_id, body["type"], payload, str(time.time_ns() // 1_000_000),
        )  # fmt: skip
        answer = json.dumps({"id": job_id, "status": "queued", "entry_id": entry.decode()})
        await send({"type": "http.response.start", "status": 202, "headers": HEADERS})
        await send({"type": "http.response.body", "body": answer.encode()})


def app_from_env() -> Floor:
    return Floor(os.environ["CONVEYOR_REDIS_URL"])
