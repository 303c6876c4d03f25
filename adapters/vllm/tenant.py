"""The tenant of a request, derived by the server from its API key or a header (issue 23).

The fair share (``lamps_agent/scheduler/fair_share.py``) gives each tenant its share of the
engine, and the calibration keeps a record per tenant; a tenant a client names for itself (the
``lamps_tenant`` hint) is one more untrusted claim: a greedy client may spread its sessions over
many names, or borrow another client's name and eat into that client's share.  This ASGI
middleware for vLLM's OpenAI server replaces whatever tenant the body names with one the server
derives:

- from the API key (``Authorization: Bearer KEY``, the default): ``key-`` and the first 12 hex
  digits of the key's SHA-256, or the name ``LAMPS_TENANT_KEYS`` (a JSON file ``{"KEY":
  "tenant"}``) gives it;
- or from a header an authenticating proxy sets (``LAMPS_TENANT_FROM=header:X-Tenant-Id``).

A request without one is tenant ``anonymous``.  Enable it with vLLM's own option::

    vllm serve MODEL --middleware adapters.vllm.tenant.TenantFromRequest ...

(``lamps-agent serve --tenant-from api-key`` adds it.)  Only the generation endpoints are
rewritten (chat completions, completions, Anthropic messages); other requests pass untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamps_agent.hints import XARGS_PREFIX

ENV_SOURCE = "LAMPS_TENANT_FROM"  # "api-key" (default) or "header:NAME"
ENV_KEYS = "LAMPS_TENANT_KEYS"  # a JSON file mapping API keys to tenant names
ANONYMOUS = "anonymous"
TENANT_XARG = f"{XARGS_PREFIX}tenant"
PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/messages"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TenantConfigError(ValueError):
    """The tenant settings cannot be used (one line, naming the setting)."""


@dataclass(frozen=True, kw_only=True)
class TenantRule:
    """Where the tenant comes from: ``header`` (lower case; None: the API key) and ``keys``
    (API key → tenant name; a key not named is known by its hash)."""

    header: str | None = None
    keys: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> TenantRule:
        source = env.get(ENV_SOURCE, "api-key").strip()
        header: str | None = None
        if source.lower().startswith("header:"):
            header = source.split(":", 1)[1].strip().lower()
            if not header:
                raise TenantConfigError(f"{ENV_SOURCE}=header:NAME needs a header name")
        elif source.lower() != "api-key":
            raise TenantConfigError(f"{ENV_SOURCE} must be 'api-key' or 'header:NAME', got {source!r}")  # fmt: skip
        keys: dict[str, str] = {}
        path = env.get(ENV_KEYS)
        if path:
            keys = _read_keys(Path(path))
        return cls(header=header, keys=keys)

    def tenant(self, headers: Mapping[str, str]) -> str:
        """The tenant of a request with these headers (names in lower case)."""
        if self.header is not None:
            value = headers.get(self.header, "").strip()
            return value or ANONYMOUS
        scheme, _, key = headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return ANONYMOUS
        named = self.keys.get(key)
        return named if named else "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _read_keys(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TenantConfigError(f"{ENV_KEYS}: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()
    ):
        raise TenantConfigError(f"{ENV_KEYS}: {path} must map API keys to tenant names (strings)")
    return dict(data)


def with_tenant(body: bytes, tenant: str) -> bytes | None:
    """``body`` (a JSON request) with its ``vllm_xargs`` naming ``tenant``; None when the body
    is not a JSON object (vLLM answers it as it would)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    xargs = data.get("vllm_xargs")
    if not isinstance(xargs, dict):
        xargs = {}
    xargs[TENANT_XARG] = tenant
    data["vllm_xargs"] = xargs
    return json.dumps(data).encode()


class TenantFromRequest:
    """Pure ASGI middleware: each generation request's tenant hint is the one the server derives
    (module docstring).  Settings from the environment at start-up; a bad one stops the server
    with a one-line error."""

    def __init__(self, app: ASGIApp, rule: TenantRule | None = None) -> None:
        self.app = app
        self.rule = rule if rule is not None else TenantRule.from_env()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope.get("type") != "http"
            or scope.get("method") != "POST"
            or scope.get("path", "").removeprefix(scope.get("root_path", "")) not in PATHS
        ):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rewritten = with_tenant(body, self.rule.tenant(headers))
        if rewritten is not None:
            body = rewritten
            scope = dict(scope)
            scope["headers"] = [
                (k, v) for k, v in scope["headers"] if k.lower() != b"content-length"
            ] + [(b"content-length", str(len(body)).encode())]
        first = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([first], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` first, then the client's own (a disconnect)."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
