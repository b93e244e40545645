"""The HTTP face of Conveyor: the API, auth, the SSE fan-out hub and `/metrics`."""

from gateway.app import create_app

__all__ = ["create_app"]
