"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` for every failure, the
framework's own 404 / 405 / validation errors included."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)
MAX_MESSAGE = 2000  # characters of an error message (it may quote what the client sent)
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
         405: "invalid_request_error", 409: "conflict_error", 413: "request_too_large", 429: "rate_limit_error",
         499: "client_closed_request", 503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.param, self.headers = status, param, headers


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
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or None
        return error_response(f"{loc}: {err['msg']}", 400, loc)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request, exc: ClientDisconnect):  # hung up while sending its body: nobody to answer
        log.info("client disconnected while sending %s %s", request.method, request.url.path)
        return error_response("the client closed the connection while sending the request", 499)

    @app.exception_handler(Exception)
    async def _crash(_, exc: Exception):
        log.error("unhandled error", exc_info=exc)
        return error_response(f"internal error: {type(exc).__name__}: {exc}", 500)
