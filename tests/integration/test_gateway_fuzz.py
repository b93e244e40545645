"""Fuzz the API from its own OpenAPI schema (schemathesis), against a real gateway process:
whatever the input, no 5xx. The SSE endpoints are left out (a valid request streams forever);
they have their own tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error

from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import free_port
from tests.fixtures.processes import conveyor_env, start_gateway

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer fuzz-key"}


@pytest.fixture(scope="module")
def base_url(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("fuzz-gateway")
    env = conveyor_env(
        CONVEYOR_REDIS_URL=redis_server.url,
        CONVEYOR_QUEUES=f"fuzz-{uuid.uuid4().hex[:8]}",
        CONVEYOR_API_KEYS="fuzz-key=fuzzer",
        CONVEYOR_MAX_PAYLOAD_BYTES="8192",
    )
    process = start_gateway(env, port=port, log_dir=workdir, uvicorn_log_level="warning")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


# schemathesis's pytest plugin (`from_fixture`) does not run on this pytest; the operations'
# hypothesis strategies are driven directly instead.
def test_no_input_makes_the_gateway_fail(base_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json").exclude(
        path_regex=r"/events$"
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
            database=None,
        )
        def check(case: Any) -> None:
            case.call_and_validate(
                base_url=base_url, headers=AUTH, checks=[not_a_server_error], timeout=10
            )

        check()
