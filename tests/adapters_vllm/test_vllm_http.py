"""`lamps-agent serve` over HTTP, with hints in the body exactly as the LangChain middleware sends
them (``priority``, ``session_id``, ``vllm_xargs``), merged into an OpenAI chat request."""

from __future__ import annotations

import hashlib
import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm", reason="the vllm extra is not installed")

from adapters.vllm.tools.server import ManagedServer, ServeOptions, server_command, server_env
from lamps_agent.hints import LampsHints, merge_extra_body
from lamps_agent.request import KVStrategy

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any], *, key: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def test_serve_command_carries_the_plugin() -> None:
    cmd = server_command(
        ServeOptions(model="m", policy="infercept", swap=True, vllm_args=("--enforce-eager",))
    )
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "adapters.vllm.scheduler.LampsScheduler" in cmd and cmd[-1] == "--enforce-eager"
    assert json.loads(cmd[cmd.index("--additional-config") + 1])["lamps"]["policy"] == "infercept"
    assert "HostSwapConnector" in cmd[cmd.index("--kv-transfer-config") + 1]
    assert "--scheduler-cls" not in server_command(ServeOptions(model="m", policy="stock"))
    derived = ServeOptions(model="m", tenant_from="header:X-Tenant-Id")
    assert "adapters.vllm.tenant.TenantFromRequest" in server_command(derived)
    assert server_env(derived)["LAMPS_TENANT_FROM"] == "header:X-Tenant-Id"
    assert "--middleware" not in server_command(ServeOptions(model="m"))


def test_http_requests_with_middleware_hints_reach_the_scheduler(
    tiny_model: Path, tmp_path: Path
) -> None:
    """… and the tenant is the server's: derived from the API key, whatever the hints claim."""
    stats = tmp_path / "stats.json"
    opts = ServeOptions(
        model=str(tiny_model), policy="lamps", port=_free_port(), stats_file=str(stats),
        tenant_from="api-key",
        vllm_args=("--enforce-eager", "--block-size", "32", "--max-model-len", "2048",
                   "--kv-cache-memory-bytes", str(2 * 2**20)),
    )  # fmt: skip
    with ManagedServer(opts, log_path=tmp_path / "server.log") as server:
        for step, (tool, duration) in enumerate([("search", 2.0), (None, 0.0)]):
            hints = LampsHints(
                session_id="thread-42", priority=1834, agent="qa", step=step, output_tokens=16,
                tool=tool, tool_duration=duration, kv_strategy=KVStrategy.PRESERVE if tool else KVStrategy.DISCARD,
                tenant="someone-else",  # a claim the server replaces
            )  # fmt: skip
            user_extra = {
                "vllm_xargs": {"user_key": 7},
                "top_k": 5,
            }  # the user's own extra_body survives
            body = {
                "model": str(tiny_model),
                "messages": [{"role": "user", "content": "the agent calls a tool " * 40}],
                "max_tokens": 16,
                **merge_extra_body(hints.to_body(), user_extra),
            }
            assert body["vllm_xargs"]["user_key"] == 7 and body["session_id"] == "thread-42"
            reply = _post(f"{server.url}/v1/chat/completions", body, key="sk-team-a")
            assert reply["choices"][0]["message"]["content"] is not None
        garbage = {"model": str(tiny_model), "prompt": "hello", "max_tokens": 4,
                   "vllm_xargs": {"lamps_hint_version": 1, "lamps_step": "NaN"}}  # fmt: skip
        assert _post(f"{server.url}/v1/completions", garbage)["choices"]
        for _ in range(60):  # the stats file is written every 50 steps and at shutdown
            if stats.exists():
                break
            _post(
                f"{server.url}/v1/completions",
                {"model": str(tiny_model), "prompt": "x", "max_tokens": 1},
            )
    data = json.loads(stats.read_text())
    assert data["policy"] == "lamps"
    tenant = "key-" + hashlib.sha256(b"sk-team-a").hexdigest()[:12]
    assert data["tenant_turns"][tenant] == 2  # the two hinted turns, under the key's tenant
    assert "someone-else" not in data["tenant_turns"]
    assert data["tenant_turns"]["anonymous"] >= 1  # the requests without a key
    assert data["hints"]["ok"] >= 2 and data["hints"]["malformed"] >= 1
    decided = data["decisions"]
    assert decided["preserve"] + decided["swap"] + decided["discard"] >= 1  # the paused turn
    assert decided["advised_followed"] + decided["advised_overruled"] >= 1  # its hint was read
