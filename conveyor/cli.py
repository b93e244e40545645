"""The `conveyor` command. Thin on purpose: each command reads Settings and hands over.

Imports of the gateway, the worker, the client and the commands are lazy so that `conveyor
worker` never loads FastAPI and `conveyor --help` stays fast.
"""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

import click
from pydantic import ValidationError

from schemas.settings import Settings
from schemas.status import JobStatus

if TYPE_CHECKING:
    from conveyor.client import Client, SubmitOptions


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:  # a bad CONVEYOR_* variable: one line, not a traceback
        raise click.ClickException(f"invalid configuration: {exc}") from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="conveyor", prog_name="conveyor")
def main() -> None:
    """Conveyor: jobs on Redis Streams. Configured by CONVEYOR_* variables (see README)."""


def _gateway(settings: Settings) -> tuple[str, str] | None:
    """The gateway's URL and the API key to use there, when both are configured."""
    if settings.url and settings.api_key:
        return settings.url, settings.api_key
    return None


def _through_gateway(command: Callable[[Client], int]) -> NoReturn:
    """Run a command that needs the gateway, or say what is missing."""
    gateway = _gateway(_settings())
    if gateway is None:
        name = click.get_current_context().info_name
        raise click.ClickException(
            f"`conveyor {name}` talks to a gateway: set CONVEYOR_URL (e.g. "
            "http://127.0.0.1:8000) and CONVEYOR_API_KEY (a key of its CONVEYOR_API_KEYS)"
        )
    from conveyor.remote import run as run_remote

    sys.exit(run_remote(*gateway, command))


@main.command()
def run() -> None:
    """The whole stack in the foreground; embedded Redis and S3 where none is configured."""
    settings = _settings()
    from conveyor.run import run as run_stack

    sys.exit(run_stack(settings))


@main.command()
def gateway() -> None:
    """One gateway process (HTTP API, SSE, dashboard) on CONVEYOR_HOST:CONVEYOR_PORT."""
    settings = _settings()
    from conveyor.gateway_app import gateway_app
    from conveyor.logs import configure_logging
    from conveyor.telemetry import configure as configure_tracing
    from gateway.server import serve

    configure_logging(settings, "gateway")
    configure_tracing("conveyor-gateway")
    app = gateway_app(settings)
    # What start-up allocated (modules, models, settings) lives as long as the process: out
    # of the collector's sight, a full collection no longer walks it on the request path.
    gc.freeze()
    serve(app, settings)


@main.command()
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs run at once by this process [default: CONVEYOR_CONCURRENCY].",
)
@click.option(
    "--queue", default=None, help="Queue to consume [default: the first of CONVEYOR_QUEUES]."
)
@click.option(
    "--burst",
    is_flag=True,
    help="Exit once the queue has nothing left: nothing queued or running, and no delayed "
    "job or retry and no parent waiting for its children still to come.",
)
@click.option(
    "--handlers",
    metavar="MODULE",
    default=None,
    help="Worker settings module registering extra handlers.",
)
def worker(concurrency: int | None, queue: str | None, burst: bool, handlers: str | None) -> None:
    """One consumer process."""
    settings = _settings()
    from consumers.worker import run_worker
    from conveyor.logs import configure_logging
    from conveyor.telemetry import configure as configure_tracing

    configure_logging(settings, "worker")
    configure_tracing("conveyor-worker")
    queue = queue or settings.queues[0]
    sys.exit(
        run_worker(settings, queue=queue, concurrency=concurrency, burst=burst, handlers=handlers)
    )


def _json_object(_ctx: click.Context, _param: click.Parameter, value: str) -> dict[str, Any]:
    try:
        payload = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise click.BadParameter("must be a JSON object")
    return payload


@main.command()
@click.argument("job_type", metavar="TYPE")
@click.option(
    "--payload",
    default="{}",
    callback=_json_object,
    metavar="JSON",
    help="The job's payload, a JSON object.",
)
@click.option("--queue", default=None, help="[default: the first of CONVEYOR_QUEUES]")
@click.option(
    "--delay", type=click.FloatRange(min=0), default=None, metavar="SECONDS", help="Run it later."
)
@click.option(
    "--priority", type=click.IntRange(0, 9), default=None, help="0-9, higher first [default: 5]."
)
@click.option(
    "--idempotency-key",
    default=None,
    metavar="KEY",
    help="Submitting again with the same key returns the same job.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Print each event until the job ends; exit non-zero unless it succeeded.",
)
def submit(
    job_type: str,
    payload: dict[str, Any],
    queue: str | None,
    delay: float | None,
    priority: int | None,
    idempotency_key: str | None,
    wait: bool,
) -> None:
    """Submit a job and print its id: through the gateway when CONVEYOR_URL and
    CONVEYOR_API_KEY are set, else straight into the store at CONVEYOR_REDIS_URL."""
    settings = _settings()
    options: SubmitOptions = {}
    if queue is not None:
        options["queue"] = queue
    if delay is not None:
        options["delay_s"] = delay
    if priority is not None:
        options["priority"] = priority
    gateway = _gateway(settings)
    if gateway is not None:
        from conveyor import remote

        if idempotency_key is not None:
            options["idempotency_key"] = idempotency_key
        submit_it = partial(
            remote.submit, job_type=job_type, payload=payload, options=options, wait=wait
        )
        sys.exit(remote.run(*gateway, submit_it))
    from conveyor.commands import submit_command

    sys.exit(
        submit_command(
            settings,
            job_type,
            payload=payload,
            options={"queue": settings.queues[0], **options},
            idempotency_key=idempotency_key,
            wait=wait,
        )
    )


@main.command()
@click.argument("job_id", metavar="ID")
def get(job_id: str) -> None:
    """Print the job's snapshot as JSON (through the gateway)."""
    from conveyor import remote

    _through_gateway(partial(remote.get, job_id=job_id))


@main.command()
@click.argument("job_id", metavar="ID")
def cancel(job_id: str) -> None:
    """Cancel the job: at once if it has not started, else its worker stops it."""
    from conveyor import remote

    _through_gateway(partial(remote.cancel, job_id=job_id))


@main.command()
@click.argument("job_id", metavar="ID")
@click.option("--from-start", is_flag=True, help="Run every step again, not only the failed one.")
def retry(job_id: str, from_start: bool) -> None:
    """Queue a failed or cancelled job again."""
    from conveyor import remote

    _through_gateway(partial(remote.retry, job_id=job_id, from_start=from_start))


@main.command(name="list")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]), default=None)
@click.option("--type", "job_type", default=None, metavar="TYPE")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
def list_(status: str | None, job_type: str | None, limit: int) -> None:
    """Your newest jobs, one line each."""
    from conveyor import remote

    _through_gateway(partial(remote.list_jobs, status=status, job_type=job_type, limit=limit))


@main.command()
@click.argument("job_id", metavar="ID")
def tail(job_id: str) -> None:
    """Print the job's events, then follow it until it ends; exit non-zero unless it
    succeeded."""
    from conveyor import remote

    _through_gateway(partial(remote.tail, job_id=job_id))


@main.command()
@click.option("--queue", default=None, help="[default: the first of CONVEYOR_QUEUES]")
def inspect(queue: str | None) -> None:
    """The queue at a glance: length, pending per consumer, lag, delayed, dead-lettered."""
    settings = _settings()
    from conveyor.commands import inspect_command

    sys.exit(inspect_command(settings, queue or settings.queues[0]))


@main.command(name="pause")
@click.option("--queue", default=None, help="[default: the first of CONVEYOR_QUEUES]")
def pause_queue(queue: str | None) -> None:
    """Start nothing more from the queue: submits are accepted, running jobs finish."""
    settings = _settings()
    from conveyor.commands import pause_command

    sys.exit(pause_command(settings, queue or settings.queues[0], paused=True))


@main.command(name="resume")
@click.option("--queue", default=None, help="[default: the first of CONVEYOR_QUEUES]")
def resume_queue(queue: str | None) -> None:
    """Start the queue's jobs again after `conveyor pause`."""
    settings = _settings()
    from conveyor.commands import pause_command

    sys.exit(pause_command(settings, queue or settings.queues[0], paused=False))


def entry_point() -> None:
    """The console script: configuration mistakes are one line on stderr, not a traceback."""
    from consumers.registry import HandlersNotFound

    try:
        main(prog_name="conveyor")
    except HandlersNotFound as exc:
        sys.exit(f"conveyor: {exc}")


if __name__ == "__main__":
    entry_point()
