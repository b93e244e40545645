"""consumers/registry.py: the payload model each kind of handler declaration gets, and the
arguments a worker hands it (or the permanent `InvalidPayload` it fails with instead).

The handlers below are module-level with postponed annotations (`from __future__ import
annotations`), as handlers are written; `JobContext` is imported for type checkers only, so
a ctx annotation that cannot be resolved at run time must not matter."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from consumers.handlers import BUILTIN_FUNCTIONS
from consumers.handlers.builtin import noop
from consumers.registry import Handler, declare, derive
from schemas.errors import InvalidPayload
from schemas.gates import Gate, gates_argument

if TYPE_CHECKING:
    from consumers.context import JobContext


class Resize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    width: int = Field(640, ge=1)


class Square(Resize):
    pass


async def typed(
    ctx: JobContext, seconds: float, steps: Annotated[int, Field(ge=1)] = 10, note=None
) -> None: ...


async def typed_and_more(ctx: JobContext, url: str, **options: Any) -> None: ...


async def anything(ctx: JobContext, **payload: Any) -> None: ...


async def whole(ctx: JobContext, job: Resize) -> None: ...


async def by_name(ctx: JobContext, url: str, width: int) -> None: ...


def blocking(ctx: Any, path: str, size_mb: int = 64) -> None: ...


async def awkward_names(ctx: JobContext, json: str, _raw: bool = False, copy: int = 0) -> None:
    """Parameter names a pydantic model could not use as field names."""


async def positional_only(ctx: JobContext, url: str, /) -> None: ...


async def ctx_by_keyword(*, ctx: JobContext, url: str) -> None: ...


async def unresolvable(ctx: JobContext, size: Unknown) -> None: ...  # noqa: F821


def invalid(handler: Callable[..., Any], value: dict[str, Any]) -> str:
    """The message `arguments` fails with (asserting it does)."""
    with pytest.raises(InvalidPayload) as caught:
        derive(handler).arguments("t", value)
    return str(caught.value)


def test_typed_keyword_arguments_make_a_model_that_forbids_anything_else() -> None:
    payload = derive(typed)
    schema = payload.model.model_json_schema()
    assert schema["required"] == ["seconds"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["steps"] == {
        "default": 10,
        "minimum": 1,
        "title": "Steps",
        "type": "integer",
    }
    assert "type" not in schema["properties"]["note"]  # unannotated: any JSON value
    # Validated values are handed over, coerced as pydantic does, defaults filled in.
    assert payload.arguments("t", {"seconds": "1.5", "note": [1]}) == (
        (),
        {"seconds": 1.5, "steps": 10, "note": [1]},
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"secs": 1},
            "payload.seconds: Field required; payload.secs: Extra inputs are not permitted",
        ),
        ({}, "payload.seconds: Field required"),
        ({"seconds": "soon"}, "payload.seconds: Input should be a valid number"),
        ({"seconds": 1, "steps": 0}, "payload.steps: Input should be greater than or equal to 1"),
    ],
)
def test_a_payload_that_does_not_fit_names_each_field(value: dict[str, Any], message: str) -> None:
    assert invalid(typed, value).startswith(message)


def test_keyword_arguments_let_other_fields_through() -> None:
    payload = derive(typed_and_more)
    assert payload.model.model_json_schema()["additionalProperties"] is True
    assert payload.arguments("t", {"url": "u", "x": {"y": 1}}) == ((), {"url": "u", "x": {"y": 1}})
    assert invalid(typed_and_more, {"x": 1}) == "payload.url: Field required"


def test_a_handler_of_keyword_arguments_alone_takes_anything() -> None:
    payload = derive(anything)
    assert payload.model.model_json_schema() == {
        "additionalProperties": True,
        "properties": {},
        "title": "anything",
        "type": "object",
    }
    assert payload.arguments("t", {"a": [1, {"b": None}]}) == ((), {"a": [1, {"b": None}]})
    # A payload field named like ctx cannot be bound: permanent, not a TypeError per attempt.
    assert invalid(anything, {"ctx": 1}) == "payload: multiple values for argument 'ctx'"


def test_a_handler_that_cannot_take_its_fields_fails_each_payload_permanently() -> None:
    # Its fields bound once at declaration would not fit: each call is bound, and refused.
    assert derive(anything).binds and not derive(ctx_by_keyword).binds
    assert invalid(ctx_by_keyword, {"url": "u"}) == "payload: too many positional arguments"


def test_a_handler_taking_one_model_gets_the_validated_instance() -> None:
    payload = derive(whole)
    assert payload.model is Resize and payload.whole
    ((job,), kwargs) = payload.arguments("t", {"url": "u"})
    assert job == Resize(url="u", width=640) and kwargs == {}
    assert invalid(whole, {"url": "u", "width": 0}).startswith("payload.width: Input should be")


def test_an_explicit_model_for_keyword_arguments() -> None:
    handler = declare(by_name, name="resize", payload=Resize)
    assert handler.payload.model is Resize and not handler.payload.whole
    assert handler.payload.arguments("resize", {"url": "u"}) == ((), {"url": "u", "width": 640})
    with pytest.raises(TypeError, match="does not take Resize's fields"):
        declare(typed, payload=Resize)
    # A handler taking a model whole may be declared with a narrower one, not another.
    assert declare(whole, payload=Square).payload.model is Square
    with pytest.raises(TypeError, match="takes Resize, not"):
        declare(whole, payload=type("Other", (BaseModel,), {"__annotations__": {"x": int}}))


def test_a_plain_def_handler_is_derived_the_same_way() -> None:
    handler = declare(blocking)
    assert isinstance(handler, Handler) and handler.name == "blocking"
    schema = handler.payload.model.model_json_schema()
    assert (schema["required"], schema["additionalProperties"]) == (["path"], False)
    assert handler.payload.arguments("t", {"path": "/x"}) == ((), {"path": "/x", "size_mb": 64})


def test_parameters_of_any_name_are_fields() -> None:
    payload = derive(awkward_names)
    assert set(payload.model.model_json_schema()["properties"]) == {"json", "_raw", "copy"}
    assert payload.arguments("t", {"json": "{}", "_raw": True}) == (
        (),
        {"json": "{}", "_raw": True, "copy": 0},
    )


def test_declarations_a_payload_cannot_reach_fail_when_declared() -> None:
    with pytest.raises(TypeError, match="positional-only"):
        derive(positional_only)
    with pytest.raises(TypeError, match=r"handler unresolvable: .*Unknown"):
        derive(unresolvable)


def test_one_handler_under_two_names_has_one_model() -> None:
    assert declare(typed, name="a").payload is declare(typed, name="b").payload


def test_the_builtin_types_take_what_design_says() -> None:
    """DESIGN.md, "Built-in job types": noop anything; sleep {seconds, steps?,
    fail_attempts?}; ingest_url {url, name?, max_bytes?}."""
    schemas = {f.name: declare(f).payload.model.model_json_schema() for f in BUILTIN_FUNCTIONS}
    assert schemas["noop"]["additionalProperties"] is True
    assert not schemas["noop"]["properties"]
    for name, required, optional in [
        ("sleep", ["seconds"], {"steps", "fail_attempts"}),
        ("ingest_url", ["url"], {"name", "max_bytes"}),
    ]:
        schema = schemas[name]
        assert schema["required"] == required and schema["additionalProperties"] is False
        assert set(schema["properties"]) == {*required, *optional}


def test_a_gate_is_declared_with_its_handler_and_checked_then() -> None:
    handler = declare(noop, name="rated", rate_limit="120/m", rate_key="payload.account")
    assert handler.gate is not None
    assert handler.gate.describe() == {"rate_limit": "120/m", "rate_key": "payload.account"}
    assert handler.gate.as_lua() == [500.0, "payload.account", 0, "", "120/m"]
    capped = declare(handler, max_running=2, concurrency_key="tenant")  # declared again
    assert capped.gate is not None and capped.gate.max_running == 2
    assert declare(noop).gate is None
    for wrong, message in [
        ({"rate_limit": "fast"}, "is not a rate"),
        ({"rate_key": "tenant"}, "set rate_limit too"),
        ({"concurrency_key": "tenant"}, "set max_running too"),
        ({"max_running": 0}, "at least 1"),
        ({"rate_limit": "5/s", "rate_key": "account"}, "'tenant' or 'payload.<field>'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            declare(noop, **wrong)  # type: ignore[arg-type]


def test_the_start_scripts_get_the_gated_types_only() -> None:
    gates = {"a": Gate.declare(max_running=1), "b": None}
    assert gates_argument(gates) == '{"a":[0,"",1,"",""]}'
    assert gates_argument({"b": None}) == ""
