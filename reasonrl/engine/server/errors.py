"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` for every failure, the
framework's own 404 / 405 / validation errors included."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from reasonrl.engine.sampling_params import ParamError

log = logging.getLogger(__name__)
MAX_MESSAGE = 2000  # characters of an error message (it may quote what the client sent)
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
         405: "invalid_request_error", 409: "conflict_error", 413: "request_too_large", 429: "rate_limit_error",
         499: "client_closed_request", 503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.param, self.headers = status, param, headers


def validation_error(errors: list[dict]) -> APIError:
    """A pydantic validation failure as a 400 naming the field the client sent. A union's members are
    tried in turn and each adds a label to the location (`stop.list[constrained-str].0`): `param`
    stops at the first one, and of the members' errors the one past the type check is reported (a
    17-string `stop` is too long, not "not a string"). A ParamError raised by a validator names its
    field below the location (a whole-body check's location is empty; its message names the field)."""
    first = errors[0]
    param = _field(first["loc"])
    err = next((e for e in errors if _field(e["loc"]) == param and not _type_mismatch(e)), first)
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ParamError):
        param = ".".join(p for p in (param, cause.param) if p)
    where = ".".join(str(x) for x in err["loc"] if not _union_label(x))
    message = err["msg"].removeprefix("Value error, ")
    return APIError(f"{where}: {message}" if where else message, param=param or None)


UNION_LABEL = re.compile(r"[\[\]\-,']|^[A-Z]|^(str|int|float|bool|none)$")
"""What pydantic labels a union member with in a location (a type: `str`, `list[int]`,
`constrained-str`, `literal['auto']`, a model's class name); a request's fields are lowercase names."""


def _union_label(part) -> bool:
    return isinstance(part, str) and UNION_LABEL.search(part) is not None


def _field(loc) -> str:
    head = []
    for part in loc:
        if _union_label(part):
            break
        head.append(str(part))
    return ".".join(head)


def _type_mismatch(err: dict) -> bool:
    """An error that only says the value is not of a union member's type."""
    return err["type"].endswith("_type") or err["type"] in ("literal_error", "is_instance_of", "none_required")


def error_response(message: str, status: int = 400, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    message = _encodable(message)  # nothing unencodable reaches the JSON encoder (a param may quote a key)
    param = None if param is None else _encodable(param)
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status,
                        headers=headers)


def _encodable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_, exc: APIError):
        return error_response(str(exc), exc.status, exc.param, exc.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(message.get(exc.status_code, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_, exc: RequestValidationError):
        err = validation_error(list(exc.errors()))
        return error_response(str(err), err.status, err.param)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request, exc: ClientDisconnect):  # hung up while sending its body: nobody to answer
        log.info("client disconnected while sending %s %s", request.method, request.url.path)
        return error_response("the client closed the connection while sending the request", 499)

    @app.exception_handler(Exception)
    async def _crash(_, exc: Exception):
        log.error("unhandled error", exc_info=exc)
        return error_response(f"internal error: {type(exc).__name__}: {exc}", 500)
