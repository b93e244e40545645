"""Request body limit, as ASGI middleware: a body over `max_bytes` is refused with 413 before
any of it is parsed, whether the client announced its size (Content-Length) or not
(chunked), so a large upload costs at most `max_bytes` of memory."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app `body`, already read whole, then the client's next
    messages (a disconnect): for a layer that had to read the body before passing it on."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class BodyLimit:
    def __init__(
        self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        max_bytes = self.per_path.get(scope["path"], self.default_max_bytes)
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await error(400, "bad_request", "invalid Content-Length")(scope, receive, send)
                    return
                if int(value) > max_bytes:
                    await self._too_large(max_bytes, scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                await self._too_large(max_bytes, scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, replaying(b"".join(chunks), receive), send)

    async def _too_large(self, max_bytes: int, scope: Scope, receive: Receive, send: Send) -> None:
        response = error(413, "payload_too_large", f"request body is over {max_bytes} bytes")
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
