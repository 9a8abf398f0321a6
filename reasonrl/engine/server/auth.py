"""API keys: `Authorization: Bearer KEY` on every route but /health, compared in constant time.

The administrative routes (loading weights, aborting everyone's requests) take the admin key when
one is set (else the API key), or are turned off altogether. The admin key also opens every
other route: a trainer holds one key.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from reasonrl.engine.server.config import ServeConfig
from reasonrl.engine.server.errors import APIError, error_response

OPEN_PATHS = {"/health"}


class Auth:
    def __init__(self, cfg: ServeConfig):
        self.api_key, self.admin_key, self.admin_routes = cfg.api_key, cfg.admin_api_key or cfg.api_key, cfg.admin_routes

    def check(self, authorization: str | None, admin: bool = False) -> None:
        """Raises a 401 (wrong or missing key) or 403 (admin routes off) APIError."""
        if admin and not self.admin_routes:
            raise APIError("the administrative routes are turned off on this server", 403)
        keys = [self.admin_key] if admin else [self.api_key, self.admin_key]
        if keys[0] is not None and not any(k is not None and _matches(authorization, k) for k in keys):
            what = "the admin API key" if admin and self.admin_key != self.api_key else "a valid API key"
            raise APIError(f"this route needs {what} as 'Authorization: Bearer KEY'", 401,
                           headers={"WWW-Authenticate": "Bearer"})

    def require_admin(self, request: Request) -> None:
        self.check(request.headers.get("authorization"), admin=True)


def _matches(authorization: str | None, key: str) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    ok_scheme = scheme.lower() == "bearer"
    # compare_digest takes the same time whatever prefix matches; only the length can leak
    return hmac.compare_digest(token.strip().encode("utf-8", "replace"), key.encode()) and ok_scheme


class AuthMiddleware:
    """Refuses every HTTP request without the API key before any route (or 404) sees it."""

    def __init__(self, app: ASGIApp, auth: Auth):
        self.app, self.auth = app, auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            headers = dict(scope["headers"])
            raw = headers.get(b"authorization")
            try:
                self.auth.check(None if raw is None else raw.decode("latin-1"))
            except APIError as exc:
                await error_response(str(exc), exc.status, headers=exc.headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)
