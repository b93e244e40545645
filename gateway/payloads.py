"""The job types a gateway accepts, and the model each one's payload must fit: payloads are
checked at the door, so a typo is a 422 naming the field rather than a job that fails.

The models are the handlers' own (consumers/registry.py derives them from the handlers'
signatures), handed in by the composition root (conveyor/gateway_app.py); a type given by
name alone takes any JSON object. `JobTypes.check` is the one check of a submit's type and
payload; `check_flow` applies it to every job of a flow, each located where it is (`at`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from schemas.errors import InvalidPayload, UnknownJobType
from schemas.gates import Gate
from schemas.models import SubmitRequest

ANY_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
# Payload models as OpenAPI components, apart from the API's own (a handler's model may well
# be called `Job`): `payload.sleep`, `payload.Resize`.
COMPONENT_PREFIX = "payload."


@dataclass(frozen=True)
class JobType:
    """A job type as its handler declares it. `payload` None: any JSON object;
    `timeout_s` and `max_tries` None: the worker's defaults."""

    name: str
    payload: type[BaseModel] | None = None
    timeout_s: float | None = None
    max_tries: int | None = None
    gate: Gate | None = None  # its rate limit and cap on how many run at once


class JobTypes:
    """The accepted job types by name, with each one's payload JSON Schema."""

    def __init__(self, types: Iterable[str | JobType]) -> None:
        declared = (JobType(t) if isinstance(t, str) else t for t in types)
        self._types = {t.name: t for t in sorted(declared, key=lambda t: t.name)}
        self._schemas = {
            t.name: t.payload.model_json_schema() if t.payload else ANY_OBJECT
            for t in self._types.values()
        }

    def __iter__(self) -> Iterator[JobType]:
        return iter(self._types.values())

    def get(self, name: str) -> JobType | None:
        return self._types.get(name)

    def schema(self, name: str) -> dict[str, Any]:
        """The JSON Schema of the type's payload, whole (nested models under `$defs`)."""
        return self._schemas[name]

    def check(
        self, job_type: str, payload: dict[str, Any], at: Sequence[str | int] = ("payload",)
    ) -> None:
        """Raises `UnknownJobType`, or `InvalidPayload` with pydantic's errors located under
        `at` (where the payload is in the submit body)."""
        known = self._types.get(job_type)
        if known is None:
            raise UnknownJobType(job_type, list(self._types))
        if known.payload is not None:
            try:
                known.payload.model_validate(payload)
            except ValidationError as exc:
                raise InvalidPayload.from_validation(job_type, exc, at) from None

    def check_flow(self, body: SubmitRequest, at: tuple[str | int, ...] = ()) -> None:
        """`check` for every job of a submit's flow, each payload located where it is in the
        body: `children.0.payload.seconds`."""
        self.check(body.type, body.payload, (*at, "payload"))
        for i, child in enumerate(body.children):
            self.check_flow(child, (*at, "children", i))

    def document(self, openapi: dict[str, Any], path: str) -> None:
        """Show each type's payload in the OpenAPI document: its model among the components,
        and the request body of `POST path` as one variant per type, told apart by `type`.
        FastAPI still validates the body as it declares it; this is the documentation."""
        operation = openapi["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]
        components = openapi.setdefault("components", {}).setdefault("schemas", {})
        submit = components[body["schema"]["$ref"].rsplit("/", 1)[1]]
        models = {t.payload for t in self._types.values() if t.payload is not None}
        refs, defs = models_json_schema(
            [(model, "validation") for model in models],
            ref_template=f"#/components/schemas/{COMPONENT_PREFIX}{{model}}",
        )
        for name, schema in defs.get("$defs", {}).items():
            components[f"{COMPONENT_PREFIX}{name}"] = schema
        variants = []
        for t in self._types.values():
            variant = copy.deepcopy(submit)
            variant.pop("description", None)
            variant["title"] = f"{t.name} job"
            properties = variant["properties"]
            properties["type"] = {"const": t.name, "title": "Type"}
            properties["payload"] = refs[(t.payload, "validation")] if t.payload else ANY_OBJECT
            if self._schemas[t.name].get("required"):  # then `{}`, the default, does not fit
                variant["required"] = [*variant.get("required", []), "payload"]
            variants.append(variant)
        body["schema"] = {"oneOf": variants}
