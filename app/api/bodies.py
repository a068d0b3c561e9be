"""JSON request bodies parsed by a dependency instead of by FastAPI.

FastAPI reads and validates a declared body model on the event loop, before any dependency runs,
so an anonymous client could make the server parse a large body that authentication would have
refused. Here the body is read only when the dependency runs (declare it after the token check)
and parsed and validated in the thread pool, where per-item validators in Python yield the GIL
to the event loop. The OpenAPI schema still shows the model as the request body.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app.finite import out_of_range

_REF = "#/components/schemas/{model}"
_DOCUMENTED: dict[str, type[BaseModel]] = {}


class JsonBody:
    """`Depends(JsonBody(Model))` gives the validated body; pass `.openapi` as the route's openapi_extra."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model
        _DOCUMENTED[model.__name__] = model
        self.openapi = {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}},
            }
        }

    async def __call__(self, request: Request) -> BaseModel:
        raw = await request.body()  # the size limit (app.limits) applies while this reads
        return await run_in_threadpool(self.parse, raw)

    def parse(self, raw: bytes, context: dict[str, Any] | None = None) -> BaseModel:
        """The validated body (`context`: pydantic's validation context). A NaN, an Infinity or an
        integer past 64 bits anywhere in it is a 422 naming where, whatever the field's type."""
        problems = out_of_range(raw)
        if problems:
            raise RequestValidationError(problems)
        try:
            return self.model.model_validate_json(raw, context=context)
        except ValidationError as err:
            # the same shape FastAPI gives a body it validated itself: loc starts with "body"
            errors = [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)]
            raise RequestValidationError(errors) from None


def document_bodies(app: FastAPI) -> None:
    """Add the models that JsonBody routes take to the app's OpenAPI components."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schemas = generate().setdefault("components", {}).setdefault("schemas", {})
            for name, model in _DOCUMENTED.items():
                schema = model.model_json_schema(ref_template=_REF)
                schemas.update(schema.pop("$defs", {}))
                schemas[name] = schema
        return app.openapi_schema

    app.openapi = openapi
