"""Against a local HTTP server standing in for vLLM's /v1/chat/completions: the JSON body that
ChatOpenAI sends carries the hints (``priority``, ``session_id``, ``vllm_xargs``) next to the
user's own ``extra_body``, and the ``X-Session-ID`` header a session-affinity router reads next to
the user's own headers."""

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
from langchain.agents.middleware import AgentMiddleware, ModelRequest  # noqa: E402
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
    headers: list[dict[str, str]]  # lower-cased names


class Handler(BaseHTTPRequestHandler):
    server: FakeVLLM

    def do_POST(self) -> None:
        assert self.path == "/v1/chat/completions"
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        self.server.headers.append({k.lower(): v for k, v in self.headers.items()})
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
    httpd.headers = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def chat(server: FakeVLLM, **kwargs: Any) -> ChatOpenAI:
    host, port = server.server_address[:2]
    return ChatOpenAI(  # type: ignore[call-arg]
        base_url=f"http://{host!s}:{port}/v1",
        api_key="EMPTY",  # type: ignore[arg-type]
        model="fake-model",
        max_retries=0,
        timeout=10,
        extra_body={"top_k": 20, "vllm_xargs": {"user_key": "kept"}},
        **kwargs,
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
    assert [h["x-session-id"] for h in server.headers] == ["vllm-thread"] * 4
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
    assert server.headers[0]["x-session-id"] == hints.session_id
    assert hints.agent == "wrapped" and hints.step == 0
    assert body["vllm_xargs"]["user_key"] == "kept"


class CallHeaders(AgentMiddleware[Any, Any, Any]):
    """A user's own middleware putting per-call headers in the model settings."""

    def wrap_model_call(self, request: ModelRequest[Any], handler: Any) -> Any:
        settings = {**request.model_settings, "extra_headers": {"X-Call": "c"}}
        return handler(request.override(model_settings=settings))


def _agent(model: ChatOpenAI, **kwargs: Any) -> Any:
    lamps = LampsMiddleware(registry=FakeRegistry(hints={"add": 0.5}), agent="h", **kwargs)
    return create_agent(model, [add], middleware=[CallHeaders(), lamps])


def test_session_header_keeps_the_users_headers(server: FakeVLLM) -> None:
    model = chat(server, model_kwargs={"extra_headers": {"X-Model": "m"}})
    _agent(model).invoke(
        {"messages": [HumanMessage("1 + 2?")]}, {"configurable": {"thread_id": "t1"}}
    )
    assert len(server.headers) == 2
    for headers in server.headers:
        assert headers["x-session-id"] == "t1"
        assert headers["x-model"] == "m" and headers["x-call"] == "c"


@pytest.mark.parametrize(
    ("kwargs", "sent"),
    [
        ({"session_header": None}, None),  # turned off
        ({"session_header": "X-Affinity"}, "t2"),  # another router's header
    ],
)
def test_session_header_can_be_renamed_or_turned_off(
    server: FakeVLLM, kwargs: dict[str, Any], sent: str | None
) -> None:
    _agent(chat(server), **kwargs).invoke(
        {"messages": [HumanMessage("1 + 2?")]}, {"configurable": {"thread_id": "t2"}}
    )
    name = str(kwargs["session_header"] or "x-session-id").lower()
    assert [h.get(name) for h in server.headers] == [sent, sent]
    assert all("x-session-id" not in h for h in server.headers)


def test_a_session_header_the_user_set_wins(server: FakeVLLM) -> None:
    model = chat(server, default_headers={"x-session-id": "mine"})
    _agent(model).invoke(
        {"messages": [HumanMessage("1 + 2?")]}, {"configurable": {"thread_id": "t3"}}
    )
    assert [h["x-session-id"] for h in server.headers] == ["mine", "mine"]
    assert [b["session_id"] for b in server.bodies] == ["t3", "t3"]


@pytest.mark.parametrize("header", ["", "X Session", "X:S", 7])
def test_a_bad_session_header_is_refused(header: Any) -> None:
    with pytest.raises(ValueError, match="session_header"):
        LampsMiddleware(session_header=header)
    with pytest.raises(ValueError, match="session_header"):
        wrap(ChatOpenAI(api_key="EMPTY", model="m"), session_header=header)  # type: ignore[arg-type]
