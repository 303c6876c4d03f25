"""The tenant derived on the server (adapters/vllm/tenant.py): the ASGI middleware for vLLM's
OpenAI server, driven as Starlette drives it, with a recording app in vLLM's place.  Needs no
vLLM: the middleware is plain ASGI."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.vllm.tenant import (
    ANONYMOUS,
    ENV_KEYS,
    ENV_SOURCE,
    TENANT_XARG,
    TenantConfigError,
    TenantFromRequest,
    TenantRule,
    with_tenant,
)


class Recorder:
    """vLLM's app: keeps the scope and the body it was given."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {}
        self.body = b""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope = scope
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                break


def call(
    middleware: TenantFromRequest,
    app: Recorder,
    body: bytes,
    *,
    path: str = "/v1/chat/completions",
    method: str = "POST",
    headers: dict[str, str] | None = None,
    chunks: int = 1,
) -> dict[str, Any] | bytes:
    app.body = b""
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    raw.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": raw}
    size = max(1, -(-len(body) // chunks))
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        return None

    asyncio.run(middleware(scope, receive, send))
    length = dict(app.scope["headers"])[b"content-length"]
    assert int(length) == len(app.body)  # vLLM reads the body by its length
    try:
        return json.loads(app.body)  # type: ignore[no-any-return]
    except ValueError:
        return app.body


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "vllm_xargs": {"lamps_tenant": "someone-else", "lamps_agent": "coder"}}  # fmt: skip


def test_the_api_keys_tenant_replaces_the_one_the_client_names() -> None:
    app = Recorder()
    middleware = TenantFromRequest(app, TenantRule())
    got = call(middleware, app, json.dumps(CHAT).encode(), headers={"Authorization": "Bearer k1"})
    assert isinstance(got, dict)
    expected = "key-" + hashlib.sha256(b"k1").hexdigest()[:12]
    assert got["vllm_xargs"] == {TENANT_XARG: expected, "lamps_agent": "coder"}
    assert got["messages"] == CHAT["messages"]
    other = call(middleware, app, json.dumps(CHAT).encode(), headers={"Authorization": "Bearer k2"})
    assert isinstance(other, dict) and other["vllm_xargs"][TENANT_XARG] != expected


def test_named_keys_a_header_and_no_credentials() -> None:
    named = TenantRule(keys={"k1": "team-a"})
    assert named.tenant({"authorization": "Bearer k1"}) == "team-a"
    assert named.tenant({"authorization": "Bearer k9"}).startswith("key-")
    assert named.tenant({}) == ANONYMOUS
    assert named.tenant({"authorization": "Basic k1"}) == ANONYMOUS
    by_header = TenantRule(header="x-tenant-id")
    assert by_header.tenant({"x-tenant-id": "acme", "authorization": "Bearer k1"}) == "acme"
    assert by_header.tenant({"authorization": "Bearer k1"}) == ANONYMOUS


def test_a_body_in_chunks_a_body_without_xargs_and_one_that_is_not_json() -> None:
    app = Recorder()
    middleware = TenantFromRequest(app, TenantRule(header="x-tenant-id"))
    body = json.dumps({"model": "m", "prompt": "x" * 5000}).encode()
    got = call(middleware, app, body, path="/v1/completions", chunks=4,
               headers={"X-Tenant-Id": "acme"})  # fmt: skip
    assert isinstance(got, dict) and got["vllm_xargs"] == {TENANT_XARG: "acme"}
    assert got["prompt"] == "x" * 5000
    assert call(middleware, app, b"not json{") == b"not json{"  # vLLM answers it as before
    assert call(middleware, app, b"[1, 2]") == [1, 2]


def test_other_requests_pass_untouched() -> None:
    app = Recorder()
    middleware = TenantFromRequest(app, TenantRule())
    body = json.dumps(CHAT).encode()
    assert call(middleware, app, body, path="/v1/embeddings") == CHAT
    assert call(middleware, app, body, method="GET") == CHAT


def test_settings_come_from_the_environment_with_one_line_errors(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"k1": "team-a"}))
    rule = TenantRule.from_env({ENV_SOURCE: "api-key", ENV_KEYS: str(keys)})
    assert rule.header is None and rule.keys == {"k1": "team-a"}
    assert TenantRule.from_env({ENV_SOURCE: "header:X-Tenant-Id"}).header == "x-tenant-id"
    assert TenantRule.from_env({}).header is None  # the API key by default
    for env, match in [
        ({ENV_SOURCE: "cookie"}, "must be 'api-key' or 'header:NAME'"),
        ({ENV_SOURCE: "header:"}, "needs a header name"),
        ({ENV_KEYS: str(tmp_path / "missing.json")}, "cannot read"),
    ]:
        with pytest.raises(TenantConfigError, match=match):
            TenantRule.from_env(env)
    keys.write_text(json.dumps({"k1": 3}))
    with pytest.raises(TenantConfigError, match="must map API keys to tenant names"):
        TenantRule.from_env({ENV_KEYS: str(keys)})


def test_with_tenant_keeps_the_other_hints() -> None:
    out = with_tenant(json.dumps({"vllm_xargs": {"lamps_step": 2}}).encode(), "t")
    assert out is not None and json.loads(out)["vllm_xargs"] == {"lamps_step": 2, TENANT_XARG: "t"}
