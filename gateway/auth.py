"""Who is calling: API keys (`Authorization: Bearer <key>`) and signed event tokens.

`EventSource` cannot send headers, so SSE links carry a short-lived token in the query
string instead: HMAC-SHA256 over (scope, tenant, expiry). A scope is `job:<id>` (one job's
events) or `events` (the tenant's firehose). Tokens are signed with
`CONVEYOR_TOKEN_SECRET`; when it is unset each process draws a random secret, which is fine
for one gateway but means replicas behind a load balancer must share a configured secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from schemas.settings import Settings

FIREHOSE_SCOPE = "events"


def job_scope(job_id: str) -> str:
    return f"job:{job_id}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ApiKeys:
    """`key -> tenant`, compared in constant time."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = [(key.encode(), tenant) for key, tenant in keys.items()]

    def tenant(self, key: str) -> str | None:
        given = key.encode()
        found = None
        for candidate, tenant in self._keys:
            if hmac.compare_digest(candidate, given):
                found = tenant
        return found


class EventTokens:
    """Issue and check `<tenant>.<expiry>.<signature>` tokens for one scope each."""

    def __init__(self, secret: bytes, ttl_s: int) -> None:
        # Keyed once: each token copies it (a submit answers with one token per job, and
        # keying anew cost a bulk submit 5% of its time).
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)
        self.ttl_s = ttl_s

    @classmethod
    def from_settings(cls, settings: Settings) -> EventTokens:
        secret = settings.token_secret.encode() if settings.token_secret else None
        return cls(secret or secrets.token_bytes(32), settings.event_token_ttl_s)

    def _sign(self, scope: str, tenant: str, expires: int) -> str:
        mac = self._keyed.copy()
        mac.update(f"{scope}\n{tenant}\n{expires}".encode())
        return _b64(mac.digest())

    def issue(self, scope: str, tenant: str, now: float | None = None) -> str:
        expires = int(now if now is not None else time.time()) + self.ttl_s
        return f"{_b64(tenant.encode())}.{expires}.{self._sign(scope, tenant, expires)}"

    def verify(self, scope: str, token: str, now: float | None = None) -> str | None:
        """The tenant the token was issued to, or None if it is not valid for `scope` now."""
        try:
            tenant_part, expires_part, signature = token.split(".")
            tenant = _unb64(tenant_part).decode()
            expires = int(expires_part)
        except (ValueError, UnicodeDecodeError):
            return None
        if expires < (now if now is not None else time.time()):
            return None
        # Bytes, not str: compare_digest refuses a str holding non-ASCII (a TypeError, once
        # a 500 for any caller who put a non-ASCII character into a token).
        expected = self._sign(scope, tenant, expires).encode()
        if not hmac.compare_digest(signature.encode(), expected):
            return None
        return tenant
