"""conveyor/telemetry.py: the SDK installed from the OTEL_* variables, and only when asked."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from conveyor.telemetry import configure
from schemas import tracing
from tests.fixtures.tracing import uninstall_tracer_provider

OTEL = [
    "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
]


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in OTEL:
        monkeypatch.delenv(name, raising=False)
    yield
    provider = trace.get_tracer_provider()
    uninstall_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def test_an_exporter_named_installs_the_sdk_with_the_service_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert configure("conveyor-worker")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider) and tracing.active()
    assert provider.resource.attributes["service.name"] == "conveyor-worker"


def test_the_service_name_of_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "media-workers")
    assert configure("conveyor-worker")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "media-workers"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"},
    ],
)
def test_nothing_is_installed_unless_an_exporter_is_asked_for(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert not configure("conveyor-worker")
    assert not tracing.active()


def test_an_exporter_no_package_provides_is_named_in_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "no-such-exporter")
    with caplog.at_level(logging.WARNING, "conveyor.telemetry"):
        assert not configure("conveyor-worker")
    assert "'no-such-exporter'" in caplog.text and not tracing.active()


def test_a_provider_installed_before_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    """`opentelemetry-instrument conveyor worker` installs its own first."""
    theirs = TracerProvider(shutdown_on_exit=False)
    trace.set_tracer_provider(theirs)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert not configure("conveyor-worker")
    assert trace.get_tracer_provider() is theirs


def test_without_the_sdk_it_says_so_and_installs_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    for name in [m for m in sys.modules if m.startswith("opentelemetry.sdk")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import` of it raises ImportError
    with caplog.at_level(logging.WARNING, "conveyor.telemetry"):
        assert not configure("conveyor-worker")
    assert "conveyor[otel]" in caplog.text
