"""Slow external services: a storyteller agent that asks its user, draws and speaks.

    python examples/slow_tools_agent.py                 # offline, scripted model, ~2 s
    python examples/slow_tools_agent.py --time-scale 1  # real INFERCEPT latencies (about a minute)
    python examples/slow_tools_agent.py --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct

Its tools stand in for a person and two generative services.  Each call's latency is drawn from
the INFERCEPT trace (lamps_agent's built-in ``multi-api`` trace) for that kind of call: a human's
reply (mean about 28 s), text-to-speech (about 6.1 s), image generation (about 11.5 s); then it is
multiplied by ``--time-scale`` (default 0.01, so the app finishes in seconds).  Draws are seeded
per call, so a run is reproducible.  Several conversations run at once with ``ainvoke``; the
image and speech calls of a turn run in parallel; the image service refuses some prompts, and
those failures show up in the registry's error counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from _common import chat_model, middleware, open_registry, parse_args, print_hints, print_stats
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import ToolException, tool

from lamps_agent.workloads.infercept import load_trace

SYSTEM = (
    "You make short illustrated audio stories. First ask the user what the story should be about "
    "with ask_user. Then call generate_image and text_to_speech together. Finish with a summary."
)
REQUESTS = [
    "Make an illustrated audio story for my niece.",
    "I need a bedtime story with a picture, read aloud.",
    "Tell my class a short story; they like pictures.",
    "Can you make a story I can listen to on the train?",
    "A story with an illustration for a birthday card, please.",
    "Create a little audio tale for my grandfather.",
]
THEMES = [
    "a lighthouse keeper who befriends a seal",
    "a fox who opens a bakery",
    "a dragon guarding a library",  # the image service's filter refuses dragons
    "two robots learning to dance",
    "a kite that flies to the moon",
    "a snail racing a tortoise",
]
TRACE_TOOLS = {"ask_user": "human", "generate_image": "image_gen", "text_to_speech": "tts"}
SETTINGS: dict[str, float] = {"time_scale": 0.01, "seed": 0}


@cache
def trace_latencies() -> dict[str, list[float]]:
    """Observed durations (s) of each kind of call in the INFERCEPT multi-API trace."""
    latencies: dict[str, list[float]] = defaultdict(list)
    for program in load_trace("multi-api").programs:
        for segment in program.segments:
            if segment.tool is not None:
                latencies[segment.tool].append(segment.tool_duration)
    return dict(latencies)


def latency(tool_name: str, argument: str) -> float:
    """A seeded draw from the trace for this call, scaled by ``--time-scale``."""
    rng = random.Random(f"{SETTINGS['seed']}:{tool_name}:{argument}")
    return rng.choice(trace_latencies()[TRACE_TOOLS[tool_name]]) * SETTINGS["time_scale"]


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


@tool
async def ask_user(question: str) -> str:
    """Ask the user a question and wait for the reply."""
    await asyncio.sleep(latency("ask_user", question))
    return random.Random(question).choice(THEMES)


@tool
async def generate_image(prompt: str) -> str:
    """Generate an illustration for a prompt; returns the image file."""
    await asyncio.sleep(latency("generate_image", prompt))
    if "dragon" in prompt:
        raise ToolException("the image service refused the prompt (content filter)")
    return f"image-{_digest(prompt)}.png (768x512)"


@tool
async def text_to_speech(text: str) -> str:
    """Read a text aloud; returns the audio file."""
    await asyncio.sleep(latency("text_to_speech", text))
    seconds = len(text.split()) / 2.5
    return f"speech-{_digest(text)}.wav ({seconds:.0f} s of audio)"


generate_image.handle_tool_error = True


def story_script() -> Callable[[list[BaseMessage]], AIMessage]:
    """Offline model: ask for a theme, then draw and narrate it in parallel, then sum up."""

    def script(messages: list[BaseMessage]) -> AIMessage:
        request = str(next(m.content for m in messages if isinstance(m, HumanMessage)))
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if not results:
            question = f"What should the story be about? ({request})"
            return AIMessage(content="", tool_calls=[_call("ask_user", question=question)])
        theme = str(results[0].content)
        if len(results) == 1:
            story = f"Once upon a time there was {theme}. " * 3
            return AIMessage(
                content="",
                tool_calls=[
                    _call("generate_image", prompt=f"watercolour illustration of {theme}"),
                    _call("text_to_speech", text=story.strip()),
                ],
            )
        files = ", ".join(str(m.content) for m in results[1:])
        return AIMessage(content=f"Here is your story about {theme}: {files}")

    return script


def _call(name: str, **args: str) -> dict[str, Any]:
    return {"name": name, "args": args, "id": f"{name}-{_digest(str(args))}", "type": "tool_call"}


async def run_all(agent: Any, requests: Sequence[str]) -> list[str]:
    async def one(i: int, request: str) -> str:
        config: Any = {"configurable": {"thread_id": f"story-{i}"}}
        state = await agent.ainvoke({"messages": [HumanMessage(request)]}, config)
        return str(state["messages"][-1].content)

    return await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: Any) -> None:
        parser.add_argument(
            "--time-scale",
            type=float,
            default=0.01,
            help="multiply the trace's latencies by this (default 0.01)",
        )
        parser.add_argument("--seed", type=int, default=0)

    args = parse_args("A storyteller agent whose tools are slow external services.", argv, extra)
    if not args.time_scale >= 0:
        raise SystemExit("--time-scale must be >= 0")
    SETTINGS.update(time_scale=args.time_scale, seed=args.seed)
    requests = REQUESTS[: args.limit]
    with open_registry(args) as registry:
        for fn in (ask_user, generate_image, text_to_speech):
            observed = trace_latencies()[TRACE_TOOLS[fn.name]]
            hint = sum(observed) / len(observed) * args.time_scale
            registry.register(fn, duration_hint=hint, api_type=TRACE_TOOLS[fn.name])
        model = chat_model(args, story_script())
        tools = [ask_user, generate_image, text_to_speech]
        agent = create_agent(
            model,
            tools,
            system_prompt=SYSTEM,
            middleware=middleware(args, registry, "storyteller"),
        )
        for request, reply in zip(requests, asyncio.run(run_all(agent, requests)), strict=True):
            print(f"- {request}\n  {reply}")
        print(f"latencies: INFERCEPT trace x {args.time_scale:g}")
        print_hints(model)
        print_stats(registry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
