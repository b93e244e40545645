"""What the composition root hands the gateway (see `conveyor.gateway_app`)."""

from __future__ import annotations

from typing import Protocol


class Presigner(Protocol):
    """Signs a short-lived GET URL for an object of the artifact store (one S3 client per
    process; `consumers.storage.Storage` is one)."""

    def presigned_get_url(self, key: str, expires_s: int) -> str: ...
