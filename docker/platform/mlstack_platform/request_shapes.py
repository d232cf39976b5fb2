"""Malformed requests to MLflow's REST API are answered 400, saying what is wrong.

Stock MLflow answers several shapes of bad input with a 500 and a stack trace in its log: a
body that is not a JSON object (`[]`, `"text"`, `1e999`), arrays nested deeper than Python's
parser recurses, a list where its protobuf message has a single value (its auth layer then
fails hashing it), a NUL character (PostgreSQL refuses to store one), a GraphQL request without
a JSON body. This check runs before MLflow's own request hooks (its authentication included)
and refuses those shapes alone, by the request message MLflow itself parses the body into;
everything else is left to MLflow, whose answers are 4xx for the rest.
"""

from __future__ import annotations

import functools
import json

from flask import request
from google.protobuf.descriptor import Descriptor
from werkzeug.exceptions import HTTPException

# MLflow's streaming artifact endpoints take raw bytes, not JSON.
_RAW_BODY_PREFIXES = ("/api/2.0/mlflow-artifacts/", "/ajax-api/2.0/mlflow-artifacts/",
                      "/ajax-api/2.0/mlflow/upload-artifact")
GRAPHQL = "/graphql"


class BadRequest(ValueError):
    pass


@functools.cache
def _request_messages() -> dict[tuple[str, str], Descriptor]:
    """(Flask rule, method) -> the protobuf message MLflow parses that request into."""
    from mlflow.server.handlers import get_endpoints

    found = {}
    for rule, request_class, methods in get_endpoints(get_handler=lambda cls: cls):
        descriptor = getattr(request_class, "DESCRIPTOR", None)
        if isinstance(descriptor, Descriptor):
            for method in methods:
                found[(rule, method)] = descriptor
    return found


# What a field of a message must be: a single value, an object (a nested message: its fields),
# a map, or anything (google.protobuf's Value, Struct...: MLflow converts these itself).
_SINGLE, _ANY, _MAP = "single", "any", "map"


@functools.cache
def _fields(message: Descriptor) -> dict[str, tuple[bool, object]]:
    """Field name (and camelCase alias) -> (repeated, _SINGLE / _ANY / _MAP / its message)."""
    fields = {}
    for field in message.fields:
        nested = field.message_type
        if nested is None:
            kind = _SINGLE
        elif nested.GetOptions().map_entry:
            kind = _MAP
        elif nested.full_name.startswith("google.protobuf."):
            kind = _ANY
        else:
            kind = nested
        fields[field.name] = fields[field.camelcase_name] = (
            field.is_repeated and kind is not _MAP, kind)
    return fields


def _shape_error(value: dict, message: Descriptor, where: str = "") -> str | None:
    # Every item of a log-batch of 1000 metrics goes through here: kept to dict lookups.
    fields = _fields(message)
    for name, item in value.items():
        field = fields.get(name)
        if field is None:
            continue
        repeated, kind = field
        if kind is _MAP:
            if not isinstance(item, dict):
                return f"{where}{name} must be an object"
            continue
        if repeated:
            if not isinstance(item, list):
                return f"{where}{name} must be a list"
            items = item
        else:
            items = (item,)
        if kind is _ANY:
            continue
        for one in items:
            if kind is _SINGLE:
                if isinstance(one, (dict, list)):
                    return f"{where}{name} must be a single value, not {type(one).__name__}"
            elif not isinstance(one, dict):
                return f"{where}{name} must be an object"
            else:
                nested = _shape_error(one, kind, f"{where}{name}.")
                if nested:
                    return nested
    return None


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _decoder_error(exc: BaseException) -> BaseException:
    """The JSON decoder's own message, under the 400s Flask and werkzeug wrap it in."""
    while not isinstance(exc, ValueError) and exc.__context__ is not None:
        exc = exc.__context__
    return exc


def check() -> None:
    """Raises BadRequest for the current request when it has one of the shapes above."""
    if any("\x00" in v for v in request.args.values()) or "\x00" in request.path:
        raise BadRequest("a request parameter contains a NUL character")
    if request.path.startswith(_RAW_BODY_PREFIXES):
        return
    rule = request.url_rule.rule if request.url_rule is not None else None
    message = _request_messages().get((rule, request.method)) if rule else None
    if request.path == GRAPHQL:
        if request.method != "POST":
            raise BadRequest("GraphQL takes a POST with a JSON body")
    elif message is None or request.method == "GET":
        return
    raw = request.get_data(cache=True)
    if not raw.strip():
        return  # MLflow says which fields are missing
    try:
        # A JSON body through Flask's cache: MLflow's handler and validators reuse this parse
        # (a log-batch of 1000 metrics is parsed once, not twice). Another content type is
        # parsed aside, as MLflow (which then finds no JSON) must not see it as JSON.
        body = request.get_json(cache=True) if request.is_json else json.loads(raw)
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    except (ValueError, HTTPException) as exc:
        raise BadRequest(f"the request body is not valid JSON: {_decoder_error(exc)}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(body).__name__}")
    # JSON spells a NUL \u0000 in ASCII; a body in UTF-16 or UTF-32 (which the parser also
    # reads) has zero bytes. A body with neither has no NUL to look for.
    if (b"\\u0000" in raw or b"\x00" in raw) and _has_nul(body):
        raise BadRequest("the request body contains a NUL character")
    problem = _shape_error(body, message) if message is not None else None
    if problem:
        raise BadRequest(f"invalid request body: {problem}")
