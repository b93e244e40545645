"""Finding the worker settings (arq style) that declare the job types and their handlers,
and what each handler takes as its payload.

The gateway uses the same lookup to learn the types and their payload models (handed to it
by conveyor/gateway_app.py), so it can refuse an unknown type, or a payload that does not
fit, with a 422 before anything is queued; it never runs the handlers.

A handler's payload model is derived here, once, when it is declared:

    async def resize(ctx, url: str, width: int = 640)   typed keyword arguments: a model of
                                                        those fields, nothing else allowed
    async def resize(ctx, url: str, **options)          the same, other fields allowed too
    async def resize(ctx, job: Resize)                  one parameter annotated with a
                                                        pydantic model: that model, and the
                                                        handler gets the validated instance
    async def noop(ctx, **payload)                      any JSON object
    declare(resize, payload=Resize)                     that model, for a handler that takes
                                                        its fields as keyword arguments

A parameter without an annotation takes any JSON value; `Annotated[int, Field(ge=1)]`
constrains one and documents it. Plain `def` handlers are derived the same way.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from arq.cron import CronJob
from arq.utils import import_string
from arq.worker import Function, func
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.errors import PydanticUndefinedAnnotation

from schemas.errors import InvalidPayload
from schemas.gates import Gate
from schemas.settings import Settings


class HandlersNotFound(ImportError):
    """CONVEYOR_HANDLERS / --handlers names something that cannot be imported."""


@cache
def load_worker_settings(path: str) -> Any:
    """`package.module:Attr`, or `package.module` meaning its `WorkerSettings`. Like arq's
    CLI, the working directory is importable, so `--handlers myjobs` finds ./myjobs.py."""
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise HandlersNotFound(f"cannot import handlers module {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr or "WorkerSettings")
    except AttributeError:
        raise HandlersNotFound(f"{module_name} has no {attr or 'WorkerSettings'}") from None


@dataclass(frozen=True)
class Payload:
    """What a handler takes as its payload: the `model` a payload must fit, and how the
    validated payload is handed over (`arguments`)."""

    model: type[BaseModel]
    signature: inspect.Signature
    whole: bool  # the handler's one payload parameter takes the validated model itself
    # model field -> the handler's parameter: fields are aliased by parameter name, so that
    # a parameter called `json` or `_raw` is a field like any other
    parameters: dict[str, str]
    # The handler takes every field the model always has (see `__post_init__`).
    binds: bool = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        # Every field is handed over on every call, defaults included, so binding them once
        # here answers for every payload without extra fields: `arguments` binds per call
        # only a payload with extra fields (or a handler this bind refuses), which spared a
        # no-op job a tenth of its consumer's CPU.
        try:
            self.signature.bind(
                None, *((None,) if self.whole else ()), **dict.fromkeys(self.parameters.values())
            )
        except TypeError:
            binds = False
        else:
            binds = True
        object.__setattr__(self, "binds", binds)

    def arguments(
        self, job_type: str, payload: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The handler's arguments after `ctx`, checked before it is called: a payload that
        cannot fit raises `InvalidPayload` (permanent), so that a TypeError raised inside
        the handler's body stays an ordinary error, retried like any other."""
        try:
            checked = self.model.model_validate(payload)
        except ValidationError as exc:
            raise InvalidPayload.from_validation(job_type, exc) from None
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        extra = None
        if self.whole:
            args = (checked,)
        else:
            kwargs = {name: getattr(checked, field) for field, name in self.parameters.items()}
            extra = checked.model_extra
            if extra:
                kwargs.update(extra)
        if extra or not self.binds:
            try:
                self.signature.bind(None, *args, **kwargs)  # None stands for ctx
            except TypeError as exc:  # an explicit model whose fields the handler does not take
                error = {"loc": ("payload",), "msg": str(exc), "type": "type_error"}
                raise InvalidPayload(job_type, [error]) from None
        return args, kwargs


@cache
def derive(handler: Callable[..., Any], model: type[BaseModel] | None = None) -> Payload:
    """The payload of `handler` (see the module docstring), or of `model` when one is given.
    Cached, so a handler declared under several names has one model."""
    signature = inspect.signature(handler)
    name = getattr(handler, "__qualname__", type(handler).__name__)
    if not signature.parameters:
        raise TypeError(f"handler {name} takes no ctx")
    params = list(signature.parameters.values())[1:]  # after ctx
    # pydantic resolves the annotations (postponed ones in the handler's module), so the
    # model is built first, and tells whether the handler takes a model whole.
    fields: dict[str, Any] = {}
    parameters: dict[str, str] = {}
    for p in params:
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):  # nothing in a payload fills *args
            annotation = Any if p.annotation is p.empty else p.annotation
            default = ... if p.default is p.empty else p.default
            fields[f"p_{p.name}"] = (annotation, Field(default, alias=p.name))
            parameters[f"p_{p.name}"] = p.name
    takes_more = any(p.kind is p.VAR_KEYWORD for p in params)
    derived = create_model(
        name,  # the JSON Schema's title; a handler's name, never one its annotations use
        __config__=ConfigDict(extra="allow" if takes_more else "forbid"),
        __module__=getattr(handler, "__module__", __name__),
        **fields,
    )
    try:
        derived.model_rebuild()  # an annotation that cannot be resolved fails here, once
    except PydanticUndefinedAnnotation as exc:
        raise TypeError(f"handler {name}: {exc.message}") from None
    whole = _whole_model(derived, params)
    if whole is not None:
        if model is not None and not issubclass(model, whole):
            raise TypeError(f"handler {name} takes {whole.__name__}, not {model.__name__}")
        return Payload(model or whole, signature, whole=True, parameters={})
    if any(p.kind is p.POSITIONAL_ONLY for p in params):
        raise TypeError(f"handler {name} has positional-only parameters: a payload is by name")
    if model is None:
        return Payload(derived, signature, whole=False, parameters=parameters)
    try:
        signature.bind(None, **dict.fromkeys(model.model_fields))
    except TypeError as exc:
        raise TypeError(f"handler {name} does not take {model.__name__}'s fields: {exc}") from None
    return Payload(model, signature, whole=False, parameters={f: f for f in model.model_fields})


def _whole_model(
    derived: type[BaseModel], params: list[inspect.Parameter]
) -> type[BaseModel] | None:
    """The model a handler's one payload parameter is annotated with, if that is its form."""
    if len(params) != 1:
        return None
    (p,) = params
    if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.default is not p.empty:
        return None
    annotation = derived.model_fields[f"p_{p.name}"].annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


@dataclass
class Handler(Function):
    """arq's declaration of a handler, and its payload. arq's `Worker` keeps it as it is
    (its `func()` returns a `Function` unchanged)."""

    payload: Payload = dataclasses.field(kw_only=True)
    gate: Gate | None = dataclasses.field(default=None, kw_only=True)  # see schemas/gates.py


def declare(
    handler: Function | Callable[..., Any] | str,
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_tries: int | None = None,
    payload: type[BaseModel] | None = None,
    rate_limit: str | None = None,
    rate_key: str | None = None,
    max_running: int | None = None,
    concurrency_key: str | None = None,
) -> Handler:
    """A handler as the worker runs it: arq's `func()` for an `async def` (or an arq
    `Function`, or an import path), and the same declaration for a plain `def`, which arq's
    `func()` refuses and Conveyor runs in a thread; with its payload derived, or `payload`
    as its model. `functions` may list either as it is.

    Flow control (schemas/gates.py), shared by every worker of the queue: `rate_limit`
    ("120/m": per `s`, `m` or `h`) and `max_running`, each for the whole type or per
    `rate_key` / `concurrency_key` ("tenant" or "payload.<field>")."""
    gate = Gate.declare(
        rate_limit=rate_limit,
        rate_key=rate_key,
        max_running=max_running,
        concurrency_key=concurrency_key,
    )
    if isinstance(handler, str):
        handler = import_string(handler)
    if isinstance(handler, Handler) and payload is None and gate is None:
        return handler
    if isinstance(handler, Function) or inspect.iscoroutinefunction(handler):
        declared = func(handler, name=name, timeout=timeout, max_tries=max_tries)
    elif callable(handler):
        declared = Function(name or handler.__qualname__, handler, timeout, None, None, max_tries)
    else:
        raise TypeError(f"{handler!r} is not a handler")
    arq_fields = {f.name: getattr(declared, f.name) for f in dataclasses.fields(Function)}
    coroutine: Callable[..., Any] = declared.coroutine
    if isinstance(handler, Handler):  # declared again: what it left out stays as it was
        gate = gate or handler.gate
        if payload is None:
            return Handler(**arq_fields, payload=handler.payload, gate=gate)
    return Handler(**arq_fields, payload=derive(coroutine, payload), gate=gate)


def functions(settings: Settings, handlers: str | None = None) -> dict[str, Handler]:
    """The worker settings' `functions`, and the coroutine of each of its `cron_jobs`: a
    cron job runs as a job of its own type (named after it), submitted on each tick."""
    worker_settings = load_worker_settings(handlers or settings.handlers)
    declared = {f.name: f for f in map(declare, getattr(worker_settings, "functions", ()))}
    for job in cron_jobs(settings, handlers):
        if job.name not in declared:
            declared[job.name] = declare(
                job.coroutine, name=job.name, timeout=job.timeout_s, max_tries=job.max_tries
            )
    return declared


def cron_jobs(settings: Settings, handlers: str | None = None) -> list[CronJob]:
    """arq's `cron_jobs = [cron(...)]` of the worker settings (honoured: consumers/
    scheduling.py submits one job per tick, however many workers run)."""
    return list(getattr(load_worker_settings(handlers or settings.handlers), "cron_jobs", ()))
