"""Against a local HTTP server standing in for vLLM's /v1/chat/completions: the JSON body that
ChatOpenAI sends carries the hints (``priority``, ``session_id``, ``vllm_xargs``) next to the
user's own ``extra_body``."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytestmark = pytest.mark.langchain
pytest.importorskip("langchain")
pytest.importorskip("langchain_openai")

from langchain.agents import create_agent  # noqa: E402
from langchain_core.messages import HumanMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402
from lc_fakes import FakeRegistry  # noqa: E402

from adapters.langchain import LampsHints, LampsMiddleware, wrap  # noqa: E402


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def completion(body: dict[str, Any]) -> dict[str, Any]:
    """A valid OpenAI chat completion: call ``add`` first, answer once a tool result is in."""
    answered = any(m.get("role") == "tool" for m in body["messages"])
    if answered:
        message: dict[str, Any] = {"role": "assistant", "content": "It is 3."}
        finish = "stop"
    else:
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "add", "arguments": json.dumps({"a": 1, "b": 2})},
        }
        message, finish = {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "m"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27},
    }


class FakeVLLM(ThreadingHTTPServer):
    bodies: list[dict[str, Any]]


class Handler(BaseHTTPRequestHandler):
    server: FakeVLLM

    def do_POST(self) -> None:
        assert self.path == "/v1/chat/completions"
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        payload = json.dumps(completion(body)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[FakeVLLM]:
    httpd = FakeVLLM(("127.0.0.1", 0), Handler)
    httpd.bodies = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def chat(server: FakeVLLM) -> ChatOpenAI:
    host, port = server.server_address[:2]
    return ChatOpenAI(
        base_url=f"http://{host!s}:{port}/v1",
        api_key="EMPTY",  # type: ignore[arg-type]
        model="fake-model",
        max_retries=0,
        timeout=10,
        extra_body={"top_k": 20, "vllm_xargs": {"user_key": "kept"}},
    )


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_agent_requests_carry_the_hints(server: FakeVLLM, mode: str) -> None:
    registry = FakeRegistry(hints={"add": 0.5})
    agent = create_agent(
        chat(server), [add], middleware=[LampsMiddleware(registry=registry, agent="http")]
    )
    inputs = {"messages": [HumanMessage("1 + 2?")]}
    config: Any = {"configurable": {"thread_id": "vllm-thread"}}
    for _ in range(2):
        if mode == "invoke":
            state = agent.invoke(inputs, config)
        else:
            state = asyncio.run(agent.ainvoke(inputs, config))
        assert state["messages"][-1].content == "It is 3."
    assert len(server.bodies) == 4
    for body in server.bodies:
        assert body["session_id"] == "vllm-thread"
        assert isinstance(body["priority"], int)
        assert body["top_k"] == 20  # the user's extra_body is still there
        xargs = body["vllm_xargs"]
        assert xargs["user_key"] == "kept" and xargs["lamps_hint_version"] == 1
        assert all(type(v) in (str, int, float) for v in xargs.values())
        assert body["tools"][0]["function"]["name"] == "add"
    hints = [LampsHints.from_body(b) for b in server.bodies]
    assert [h.step for h in hints] == [0, 1, 0, 1]
    assert hints[2].tool == "add" and hints[2].output_tokens == 7  # learned from the usage report
    assert hints[1].last_tool == "add"
    assert [r["tool"] for r in registry.records] == ["add", "add"]


def test_wrapped_model_request_carries_the_hints(server: FakeVLLM) -> None:
    llm = wrap(chat(server), agent="wrapped", send_priority=False)
    reply = llm.bind_tools([add]).invoke([HumanMessage("1 + 2?")])
    assert reply.tool_calls[0]["name"] == "add"
    (body,) = server.bodies
    assert "priority" not in body and body["top_k"] == 20
    hints = LampsHints.from_body(body)
    assert hints.agent == "wrapped" and hints.step == 0
    assert body["vllm_xargs"]["user_key"] == "kept"
