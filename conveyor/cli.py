"""The `conveyor` command. Thin on purpose: each command reads Settings and hands over.

Imports of the gateway, the worker and the commands are lazy so that `conveyor worker`
never loads FastAPI and `conveyor --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from pydantic import ValidationError

from schemas.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:  # a bad CONVEYOR_* variable: one line, not a traceback
        raise click.ClickException(f"invalid configuration: {exc}") from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Conveyor: jobs on Redis Streams. Configured by CONVEYOR_* variables (see README)."""


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
    from gateway.server import serve

    configure_logging(settings, "gateway")
    serve(gateway_app(settings), settings)


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
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
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

    configure_logging(settings, "worker")
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
    "--wait",
    is_flag=True,
    help="Print each event until the job ends; exit non-zero unless it succeeded.",
)
def submit(job_type: str, payload: dict[str, Any], queue: str | None, wait: bool) -> None:
    """Submit a job and print its id."""
    settings = _settings()
    from conveyor.commands import submit_command

    queue = queue or settings.queues[0]
    sys.exit(submit_command(settings, job_type, payload=payload, queue=queue, wait=wait))


@main.command()
@click.option("--queue", default=None, help="[default: the first of CONVEYOR_QUEUES]")
def inspect(queue: str | None) -> None:
    """The queue at a glance: length, pending per consumer, lag, delayed, dead-lettered."""
    settings = _settings()
    from conveyor.commands import inspect_command

    sys.exit(inspect_command(settings, queue or settings.queues[0]))


def entry_point() -> None:
    """The console script: configuration mistakes are one line on stderr, not a traceback."""
    from consumers.registry import HandlersNotFound

    try:
        main(prog_name="conveyor")
    except HandlersNotFound as exc:
        sys.exit(f"conveyor: {exc}")


if __name__ == "__main__":
    entry_point()
