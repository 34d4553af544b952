"""Bearer-token auth for the endpoint, failing closed: an empty key is an error, a key named by
an environment variable must be there when the ingress starts, and `rig-ray serve` refuses to
listen beyond loopback without one."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import typing as t

from pydantic import BaseModel, ConfigDict

from rig_ray.errors import ServeConfigError, ServeRequestError

if t.TYPE_CHECKING:  # the CLI imports this module; Starlette only loads where the app runs
    from starlette.types import ASGIApp, Receive, Scope, Send

API_KEY_ENV = "RIG_RAY_API_KEY"
"""The environment variable read for the API key when `api_key` is not given."""
OPEN_PATHS = frozenset({"/health"})
"""Routes that need no API key."""


def key_digest(api_key: str) -> str:
    """What the ingress keeps of the API key: its SHA-256, never the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()


class Auth(BaseModel):
    """What the ingress needs to check keys: the key's digest, or the name of the environment
    variable to read it from where the ingress runs. Neither: no auth."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    digest: str | None = None
    env: str | None = None

    def resolve(self) -> str | None:
        """The digest to check against; reads `env` here (in the ingress replica), and refuses
        to go on without it, so a cluster without the key never serves without auth."""
        if self.env is None:
            return self.digest
        key = os.environ.get(self.env)
        if not key:
            state = "empty" if key == "" else "not set"
            raise ServeConfigError(
                f"${self.env} is {state} where the ingress runs; set it there, or build the "
                "app without api_key_env to serve without auth",
                field="api_key_env",
            )
        return key_digest(key)


def auth_from(api_key: str | None, api_key_env: str | None) -> Auth:
    """`api_key` (the key), else `api_key_env` (a variable read in the ingress replica), else
    $RIG_RAY_API_KEY read here; unset everywhere means no auth. An empty key is an error."""
    if api_key is not None and api_key_env is not None:
        raise ServeConfigError("give api_key or api_key_env, not both", field="api_key")
    if api_key_env is not None:
        if not api_key_env.strip():
            raise ServeConfigError("api_key_env is empty", field="api_key_env")
        return Auth(env=api_key_env)
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV)
        if api_key == "":
            raise ServeConfigError(
                f"${API_KEY_ENV} is set but empty: set a key, or unset it to serve without auth",
                field="api_key",
            )
    elif not api_key.strip():
        raise ServeConfigError("api_key is empty", field="api_key")
    return Auth(digest=key_digest(api_key) if api_key else None)


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


class BearerAuth:
    """ASGI middleware: every route but OPEN_PATHS needs `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, *, digest: str) -> None:
        self.app = app
        self.digest = digest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.datastructures import Headers

        if scope["type"] == "http" and route_path(scope) not in OPEN_PATHS:
            scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                message = "Missing bearer token: send the header 'Authorization: Bearer <key>'."
                return await _unauthorized(message)(scope, receive, send)
            if not hmac.compare_digest(key_digest(token.strip()), self.digest):
                return await _unauthorized("Incorrect API key provided.")(scope, receive, send)
        await self.app(scope, receive, send)


def route_path(scope: Scope) -> str:
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path


def _unauthorized(message: str) -> ASGIApp:
    from rig_ray.serve.http_errors import error_response

    return error_response(ServeRequestError(message, status_code=401, code="invalid_api_key"))
