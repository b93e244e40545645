"""`DirectRoutes`: `POST /v1/jobs` and `POST /v1/jobs/bulk` served in front of FastAPI.

A submit is the gateway's hottest request, and FastAPI's machinery around it (dependency
solving, which runs the sync dependencies in worker threads; the response model validated
again; the middleware chain) cost it several times its own work (bench.http_submit). This
layer, the app's outermost middleware, serves a submit whose headers and body are well
formed with the same code the routes call (`submit_job`, `submit_items`: authentication,
the body's model and the payload's, idempotency, the tenant's quota, metrics, tracing)
and answers with the same JSON, serialised once.

Anything else goes to FastAPI untouched: other paths and methods, a body without a
Content-Length or over the limit, a missing or unknown key, a malformed Idempotency-Key,
another Content-Type; and a body that does not parse or validate is handed to FastAPI as
it came, which answers with its 422. So every refusal before a write is FastAPI's own, and
the routes stay declared there (the OpenAPI document). An error raised by the submit itself
is answered by the app's own exception handlers (`gateway.errors.handler_for`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_json
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.deps import Gateway
from gateway.errors import HANDLERS, handler_for
from gateway.limits import replaying
from gateway.models import BulkSubmit
from gateway.routes.jobs import IDEMPOTENCY_KEY, submit_items, submit_job
from schemas.models import SubmitRequest

log = logging.getLogger("conveyor.gateway")

SUBMIT = "/v1/jobs"
BULK = "/v1/jobs/bulk"
JSON_TYPE = b"application/json"


def _good_key(value: bytes | None) -> bool:
    return value is None or IDEMPOTENCY_KEY.fullmatch(value.decode("latin-1")) is not None


def dumps(value: Any) -> bytes:
    # pydantic-core's encoder: compact UTF-8 as Starlette's JSONResponse renders, several
    # times faster than json's on a bulk answer's thousand jobs. The values are already
    # JSON's (model_dump(mode="json")), so only the spelling of a float may differ.
    return to_json(value)


class DirectRoutes:
    def __init__(self, app: ASGIApp, max_bytes: int, max_bulk_bytes: int) -> None:
        self.app = app
        self.limits = {SUBMIT: max_bytes, BULK: max_bulk_bytes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope["path"]) if scope["type"] == "http" else None
        gw: Gateway | None = getattr(scope["app"].state, "gateway", None) if limit else None
        if limit is None or gw is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        length = authorization = idempotency_key = content_type = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value if length is None else b""
            elif name == b"authorization":
                authorization = value if authorization is None else b""
            elif name == b"idempotency-key":
                idempotency_key = value if idempotency_key is None else b""
            elif name == b"content-type":
                content_type = value
        tenant = self._tenant(gw, authorization)
        if (
            tenant is None
            or content_type != JSON_TYPE
            or length is None
            or not length.isdigit()
            or int(length) > limit
            or not _good_key(idempotency_key)
        ):
            await self.app(scope, receive, send)  # FastAPI answers, or refuses, as ever
            return
        body = await self._body(receive)
        if body is None:
            return  # the client went away
        try:
            data = json.loads(body)
            if scope["path"] == SUBMIT:
                request = SubmitRequest.model_validate(data)
            else:
                bulk = BulkSubmit.model_validate(data)
        except (ValueError, RecursionError, ValidationError):
            await self.app(scope, replaying(body, receive), send)  # FastAPI's 422
            return
        key = idempotency_key.decode("latin-1") if idempotency_key is not None else None
        headers = Headers(scope=scope)
        try:
            if scope["path"] == SUBMIT:
                answer = await submit_job(gw, request, tenant, key, headers)
                extra = answer.headers
                status, content = answer.status_code, answer.job
            else:
                items = await submit_items(gw, bulk, tenant, headers)
                results = [
                    {
                        "status": item.status,
                        "job": item.job,
                        "error": item.error,
                    }
                    for item in items
                ]
                status, content, extra = 202, {"results": results}, {}
        except Exception as exc:  # answered as the app's exception handlers answer it
            handler = handler_for(exc)
            if handler is HANDLERS[Exception]:  # as Starlette's ServerErrorMiddleware would
                log.error("unexpected error in POST %s", scope["path"], exc_info=exc)
            await (await handler(Request(scope), exc))(scope, receive, send)
            return
        payload = dumps(content)
        raw_headers = [
            (b"content-length", str(len(payload)).encode()),
            (b"content-type", JSON_TYPE),
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    def _tenant(gw: Gateway, authorization: bytes | None) -> str | None:
        """The key's tenant, for an `Authorization: Bearer <key>` FastAPI's HTTPBearer
        would read the same way; None sends the request to FastAPI (its 401)."""
        if not authorization:
            return None
        scheme, _, key = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not key or key != key.strip() or " " in key:
            return None
        return gw.api_keys.tenant(key)

    @staticmethod
    async def _body(receive: Receive) -> bytes | None:
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
