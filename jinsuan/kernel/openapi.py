"""The error answers and signed request bodies in the OpenAPI document, defined once.

Every refusal the platform makes has one body, ``jinsuan.contract.wire.ErrorResponse``
(``{"error": {"code", "field", "reason"}}``), whichever layer makes it: the rate limiter (429),
the body limit (413), a dependency (401, 403, 503), the exception handlers of ``jinsuan.app``
(404, 409, 422). So the codes a route can answer follow from what the route is, and
:func:`document_errors` adds them to every operation of the generated document instead of each
route listing them by hand (a route may still declare more, which are kept):

- every operation: 429 (the rate limiter sits in front of every route);
- a keyed operation (one with a bearer ``security`` requirement): 401, 403, 422 and 503 (no
  pooled connection came in time);
- an operation with a path parameter, or a keyed one with any parameter or a body: 404 (an
  object it names, in the path, the query or the body, does not exist or is not the caller's);
- an operation taking a body (POST, PUT, PATCH): 413, and when keyed 409 (a state change that
  the object's present state refuses).

The signed agent routes read their raw body themselves, to verify the signature over its exact
bytes, so FastAPI cannot see their body's model: :func:`signed_body` declares it, with the
signature headers, and :func:`document_errors` puts the model's schema in the components.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel

from jinsuan.contract.wire import AGENT_HEADER, SIGNATURE_HEADER, ErrorResponse

_REF = "#/components/schemas/{model}"
_BODY_METHODS = frozenset({"post", "put", "patch"})
_MEANING = {
    401: "No API key, or one that does not verify (or, on a signed route, no valid signature).",
    403: "The key's role or owner may not do this.",
    404: "No such object, or one the caller's key does not own.",
    409: "The object's present state refuses the change.",
    413: "The request body is over the platform's limit.",
    415: "The body's Content-Encoding is not one the platform reads.",
    422: "A value in the request is not acceptable; ``field`` names it.",
    429: "Too many requests for this key or address; see Retry-After.",
    503: "The platform cannot serve this now; retry after Retry-After seconds.",
}
_ERROR_CODES = frozenset(_MEANING)

_signed_models: dict[str, type[BaseModel]] = {}  # component name -> a signed route's body model


def signed_body(model: type[BaseModel], *, gzip: bool = False) -> dict[str, Any]:
    """``openapi_extra`` for a route taking ``model`` as a body signed by a site agent."""
    _signed_models[model.__name__] = model
    headers = [
        (AGENT_HEADER, True, "The enrolled agent's id."),
        (SIGNATURE_HEADER, True, "Ed25519 signature over the exact (uncompressed) body bytes,"
                                 " base64 (jinsuan.contract.signing)."),
    ]
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "header", "required": required, "description": why,
         "schema": {"type": "string"}} for name, required, why in headers]
    if gzip:
        parameters.append({"name": "Content-Encoding", "in": "header", "required": False,
                           "description": "gzip when the body is gzip-compressed.",
                           "schema": {"type": "string", "enum": ["gzip", "identity"]}})
    return {"parameters": parameters,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": _REF.format(model=model.__name__)}}}}}


def document_errors(app: FastAPI) -> None:
    """Make ``app``'s OpenAPI document name every error code each operation can answer."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        first = app.openapi_schema is None
        document = generate()
        if first:
            _complete(document)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _complete(document: dict[str, Any]) -> None:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    _add_schema(schemas, ErrorResponse, "serialization")
    for model in _signed_models.values():
        _add_schema(schemas, model, "validation")
    error = {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}}
    for operations in document.get("paths", {}).values():
        for method, operation in operations.items():
            keyed = bool(operation.get("security"))
            codes = {429}
            if keyed:
                codes |= {401, 403, 422, 503}
            parameters = [p.get("in") for p in operation.get("parameters", [])]
            if "path" in parameters or (keyed and (parameters or "requestBody" in operation)):
                codes.add(404)
            if method in _BODY_METHODS:
                codes |= {413, 409} if keyed else {413}
            responses = operation.setdefault("responses", {})
            for code in sorted(codes | {int(c) for c in responses if c.isdigit()} & _ERROR_CODES):
                responses[str(code)] = {"description": _MEANING[code], "content": error}
    if _REF.format(model="HTTPValidationError") not in json.dumps(document["paths"]):
        for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422, replaced
            schemas.pop(unused, None)


def _add_schema(schemas: dict[str, Any], model: type[BaseModel],
                mode: Literal["validation", "serialization"]) -> None:
    """Put ``model``'s schema and those it refers to in the components, under their names."""
    schema = model.model_json_schema(ref_template=_REF, mode=mode)
    for name, sub in {**schema.pop("$defs", {}), model.__name__: schema}.items():
        known = schemas.setdefault(name, sub)
        if known != sub and _stripped(known) != _stripped(sub):
            raise RuntimeError(f"two different schemas are named {name!r} in the document")


def _stripped(schema: Any) -> Any:
    """A schema without what FastAPI and pydantic may word apart: descriptions, titles and
    defaults, which name no different value."""
    if isinstance(schema, dict):
        return {k: _stripped(v) for k, v in schema.items()
                if k not in ("description", "title", "default")}
    if isinstance(schema, list):
        return [_stripped(v) for v in schema]
    return schema
