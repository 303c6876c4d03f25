"""The framework-neutral half of the adapter: turns model and tool calls into hints and records.

:class:`HintPlanner` is shared by the agent middleware, the wrapped chat model and the callback
handler.  Before a model call it predicts the turn (through any core :class:`Predictor`), picks
the KV strategy and a priority, and builds the :class:`LampsHints`; after the call and after each
tool call it records what happened in the tool registry and teaches the predictor.  A registry
that also has ``record_turn`` (:class:`TurnRecorder`) gets every model turn: its output length,
for training the learned predictor, and its prompt's tail only where the user opted in.  It is
thread-safe: an agent runs one reply's tool calls in parallel.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol, runtime_checkable

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage

from adapters.langchain.hints import MAX_PRIORITY, LampsHints
from lamps_agent.area import Timing, TurnShape, turn_area
from lamps_agent.predictors.base import (
    DurationEstimate,
    Outcome,
    Prediction,
    PredictionQuery,
    Predictor,
)
from lamps_agent.predictors.history import HistoryPredictor
from lamps_agent.presets import Preset, load_preset
from lamps_agent.request import KVStrategy
from lamps_agent.strategy import choose_strategy, default_load, least_waste_rule

logger = logging.getLogger(__name__)

CallStatus = Literal["ok", "error"]
CHARS_PER_TOKEN = 4.0  # rough client-side token count; the server knows the exact one
MAX_TRACKED = 10_000  # sessions / tool calls remembered at once (bounded: agents may be killed)
PROMPT_TEXT_CHARS = 2_000  # the prompt's tail recorded with a turn when prompts are recorded


@runtime_checkable
class ToolRecorder(Protocol):
    """What the adapter needs from a tool registry (``tool_registry.ToolRegistry`` is one)."""

    def record(
        self,
        tool: str,
        *,
        duration: float,
        session_id: str | None = None,
        started_at: float | None = None,
        status: CallStatus = "ok",
        error_type: str | None = None,
        input_size: int | None = None,
        output_size: int | None = None,
    ) -> None: ...

    def estimate(self, tool: str) -> DurationEstimate: ...


@runtime_checkable
class TurnRecorder(Protocol):
    """A registry that also keeps model turns (``tool_registry.ToolRegistry`` is one); optional:
    a :class:`ToolRecorder` without ``record_turn`` just gets no turns."""

    def record_turn(
        self,
        *,
        agent: str,
        step: int,
        output_tokens: int,
        prompt_tokens: int | None = None,
        tool: str | None = None,
        session_id: str | None = None,
        prompt_text: str | None = None,
    ) -> None: ...


class ToolWaitListener(Protocol):
    """An in-process engine told directly when an agent starts and stops waiting on a tool."""

    def on_tool_wait(self, *, session_id: str, tool: str, predicted_duration: float) -> None: ...

    def on_tool_done(self, *, session_id: str, tool: str, duration: float, ok: bool) -> None: ...


StrategyFn = Callable[..., KVStrategy]
PriorityFn = Callable[[Prediction, int, KVStrategy], int]


@dataclass(slots=True)
class ModelTurn:
    """One planned model call: what was predicted and sent, waiting for the reply."""

    session_id: str
    step: int
    prompt_tokens: int
    hints: LampsHints
    prompt_text: str | None = None  # the prompt's tail, only when prompts are recorded


@dataclass(slots=True)
class _Prefix:
    """How much of a session's conversation was measured at its last model call."""

    count: int
    steps: int
    chars: int
    last: BaseMessage


@dataclass(slots=True)
class _PendingTurn:
    """A reply's tool calls in flight; the turn is taught to the predictor when the last returns."""

    session_id: str
    step: int
    prompt_tokens: int
    output_tokens: int
    remaining: set[str]
    tool: str | None = None
    duration: float = 0.0
    returned_tokens: int = 0


class _ToolGuesser:
    """Which tool a turn will call: the most frequent at (agent, step), else at the agent.
    The current favourites are kept up to date, so a guess is two dict look-ups."""

    def __init__(self) -> None:
        self._by_step: dict[tuple[str, int], Counter[str | None]] = {}
        self._by_agent: dict[str, Counter[str]] = {}
        self._best_step: dict[tuple[str, int], str | None] = {}
        self._best_agent: dict[str, str] = {}

    def guess(self, agent: str, step: int) -> str | None:
        key = (agent, step)
        if key in self._best_step:
            return self._best_step[key]
        return self._best_agent.get(agent)

    def observe(self, agent: str, step: int, tool: str | None) -> None:
        key = (agent, step)
        counts = self._by_step.setdefault(key, Counter())
        counts[tool] += 1
        if key not in self._best_step or counts[tool] > counts[self._best_step[key]]:
            self._best_step[key] = tool
        if tool is not None:
            tools = self._by_agent.setdefault(agent, Counter())
            tools[tool] += 1
            best = self._best_agent.get(agent)
            if best is None or tools[tool] > tools[best]:
                self._best_agent[agent] = tool


class HintPlanner:
    """Predicts each model call's hints and records each tool call (see the module docstring)."""

    def __init__(
        self,
        *,
        agent: str = "agent",
        tenant: str | None = None,
        registry: ToolRecorder | None = None,
        predictor: Predictor | None = None,
        preset: Preset | str = "a100-gptj6b",
        strategy: StrategyFn | None = None,
        priority: PriorityFn | int | None = None,
        listener: ToolWaitListener | None = None,
        record_prompts: bool = False,
    ) -> None:
        if not isinstance(agent, str) or not agent:
            raise ValueError("agent must be a non-empty string")
        if tenant is not None and (not isinstance(tenant, str) or not tenant):
            raise ValueError("tenant must be a non-empty string or None")
        if registry is not None and not isinstance(registry, ToolRecorder):
            raise TypeError("registry must have record(tool, *, duration, ...) and estimate(tool)")
        if predictor is not None and not isinstance(predictor, Predictor):
            raise TypeError(
                f"predictor must be a lamps_agent Predictor, got {type(predictor).__name__}"
            )
        if isinstance(priority, bool) or (
            isinstance(priority, int) and not -MAX_PRIORITY - 1 <= priority <= MAX_PRIORITY
        ):
            raise ValueError(f"priority must be a 32-bit int or a callable, got {priority!r}")
        if not isinstance(record_prompts, bool):
            raise TypeError(f"record_prompts must be a bool, got {type(record_prompts).__name__}")
        self.agent = agent
        self.tenant = tenant  # the client these agents run for (the engine's fair share)
        self.registry = registry
        self.turns = registry if isinstance(registry, TurnRecorder) else None
        self.record_prompts = record_prompts
        self.predictor = predictor if predictor is not None else HistoryPredictor(hints=registry)
        self.preset = load_preset(preset) if isinstance(preset, str) else preset
        # the default rule gets what depends on the preset and its engine-load guess computed
        # once, not on every call
        self._strategy = strategy or partial(choose_strategy, load=default_load(self.preset))
        self._least_waste = least_waste_rule(self.preset) if strategy is None else None
        self._priority = priority
        self._timing = _timing(self.preset)
        self.listener = listener
        self._salt = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._guesser = _ToolGuesser()
        # (session, tool call id) -> its turn; ids are unique per reply, not across sessions
        self._pending: OrderedDict[tuple[str, str], _PendingTurn] = OrderedDict()
        self._last_tool: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._prefixes: OrderedDict[str, _Prefix] = OrderedDict()
        self._warned_record = False
        self._warned_turn = False

    # -- sessions -----------------------------------------------------------------------------

    def session_id(self, thread_id: Any, messages: Sequence[BaseMessage]) -> str:
        """The LangGraph thread id, else an id stable over one conversation's turns (derived from
        its first message's id, or text), else a fresh one."""
        if thread_id:
            return str(thread_id)[:256]
        first = next((m for m in messages if not isinstance(m, SystemMessage)), None)
        if first is None:
            return f"lc-{uuid.uuid4().hex[:16]}"
        if first.id:
            return f"lc-{first.id}"[:256]
        digest = hashlib.blake2b(f"{self._salt}{first.content}".encode(), digest_size=8)
        return f"lc-{digest.hexdigest()}"

    # -- model calls --------------------------------------------------------------------------

    def plan(
        self, session_id: str, messages: Sequence[BaseMessage], *, extra_chars: int = 0
    ) -> ModelTurn:
        """Predict the coming model call and build its hints."""
        with self._lock:
            prefix = self._prefixes.get(session_id)
        step, chars = _measure(prefix, messages)
        prompt_tokens = round((chars + extra_chars) / CHARS_PER_TOKEN)
        with self._lock:  # one hold for the session's state: its measured prefix, its last tool
            if messages:
                self._prefixes[session_id] = _Prefix(len(messages), step, chars, messages[-1])
                self._prefixes.move_to_end(session_id)
                if len(self._prefixes) > MAX_TRACKED:
                    _trim(self._prefixes)
            guess = self._guesser.guess(self.agent, step)
            last = self._last_tool.pop(session_id, None)
        query = PredictionQuery(
            agent=self.agent, step=step, tool=guess, prompt_tokens=prompt_tokens
        )
        prediction = self.predictor.predict(query)
        tool = prediction.tool
        duration = prediction.tool_duration if tool is not None else 0.0
        if self._least_waste is not None:  # the default rule, as choose_strategy gives it
            strategy = (
                KVStrategy.PRESERVE  # the least-waste rule's answer for no wait at all
                if duration == 0
                else self._least_waste(prompt_tokens + prediction.output_tokens, duration)
            )
        else:
            strategy = self._strategy(
                context_tokens=prompt_tokens + prediction.output_tokens,
                tool_duration=duration,
                preset=self.preset,
            )
        hints = LampsHints(
            session_id=session_id,
            priority=self._rank(prediction, prompt_tokens, strategy),
            agent=self.agent,
            step=step,
            output_tokens=max(1, round(prediction.output_tokens)),
            tool=tool,
            tool_duration=duration,
            kv_strategy=strategy,
            last_tool=None if last is None else last[0],
            last_tool_duration=None if last is None else last[1],
            tenant=self.tenant,
        )
        return ModelTurn(
            session_id=session_id,
            step=step,
            prompt_tokens=prompt_tokens,
            hints=hints,
            prompt_text=prompt_tail(messages) if self.record_prompts else None,
        )

    def finish(self, turn: ModelTurn, reply: BaseMessage | None) -> None:
        """Learn from a model reply: a final answer is taught now, a tool-calling turn when its
        last tool call returns."""
        if not isinstance(reply, AIMessage):
            return
        output_tokens = output_token_count(reply)
        self._record_turn(turn, reply, output_tokens)
        calls = [c for c in reply.tool_calls if c.get("id")]
        with self._lock:
            if not calls:
                self._guesser.observe(self.agent, turn.step, None)
            else:
                pending = _PendingTurn(
                    session_id=turn.session_id,
                    step=turn.step,
                    prompt_tokens=turn.prompt_tokens,
                    output_tokens=output_tokens,
                    remaining={str(c["id"]) for c in calls},
                )
                for call in calls:
                    self._pending[turn.session_id, str(call["id"])] = pending
                _trim(self._pending)
        if not calls:
            self._observe(turn.step, turn.prompt_tokens, output_tokens, None, 0.0, 0)

    # -- tool calls ---------------------------------------------------------------------------

    def tool_started(self, session_id: str, tool: str, call_id: str | None) -> None:
        """Tell the listener (if any) that the agent now waits on ``tool``, and for how long."""
        if self.listener is None:
            return
        with self._lock:
            pending = self._pending.get((session_id, call_id)) if call_id is not None else None
        step = pending.step if pending is not None else 0
        query = PredictionQuery(agent=self.agent, step=step, tool=tool, prompt_tokens=0)
        predicted = self.predictor.predict(query).tool_duration
        _notify(
            self.listener.on_tool_wait,
            session_id=session_id,
            tool=tool,
            predicted_duration=predicted,
        )

    def tool_finished(
        self,
        *,
        session_id: str,
        tool: str,
        call_id: str | None,
        started_at: float,
        duration: float,
        status: CallStatus,
        error_type: str | None = None,
        input_size: int | None = None,
        output_size: int | None = None,
    ) -> None:
        """Record one finished tool call and, if it was its turn's last, teach the turn."""
        self._record(
            tool,
            duration=duration,
            session_id=session_id,
            started_at=started_at,
            status=status,
            error_type=error_type,
            input_size=input_size,
            output_size=output_size,
        )
        if self.listener is not None:
            _notify(
                self.listener.on_tool_done,
                session_id=session_id,
                tool=tool,
                duration=duration,
                ok=status == "ok",
            )
        done: _PendingTurn | None = None
        with self._lock:
            last = self._last_tool.get(session_id)
            if last is None or duration >= last[1]:
                self._last_tool[session_id] = (tool, duration)  # the agent waited on the slowest
                _trim(self._last_tool)
            pending = None if call_id is None else self._pending.pop((session_id, call_id), None)
            if pending is not None:
                if pending.tool is None or duration >= pending.duration:
                    pending.tool, pending.duration = tool, duration
                pending.returned_tokens += round((output_size or 0) / CHARS_PER_TOKEN)
                pending.remaining.discard(call_id or "")
                if not pending.remaining:
                    done = pending
        if done is not None:
            with self._lock:  # the tool the turn waited on: the slowest of its calls
                self._guesser.observe(self.agent, done.step, done.tool)
            self._observe(
                done.step,
                done.prompt_tokens,
                done.output_tokens,
                done.tool,
                done.duration,
                done.returned_tokens,
            )

    # -- internals ----------------------------------------------------------------------------

    def _observe(
        self,
        step: int,
        prompt_tokens: int,
        output_tokens: int,
        tool: str | None,
        duration: float,
        returned: int,
    ) -> None:
        query = PredictionQuery(agent=self.agent, step=step, tool=tool, prompt_tokens=prompt_tokens)
        outcome = Outcome(
            output_tokens=output_tokens, tool=tool, tool_duration=duration, returned_tokens=returned
        )
        self.predictor.observe(query, outcome)

    def _record(self, tool: str, **fields: Any) -> None:
        if self.registry is None:
            return
        try:
            self.registry.record(tool, **fields)
        except Exception:  # the registry must never break the agent
            if not self._warned_record:
                self._warned_record = True
                logger.warning("tool registry failed to record a call to %r", tool, exc_info=True)

    def _record_turn(self, turn: ModelTurn, reply: AIMessage, output_tokens: int) -> None:
        if self.turns is None:
            return
        usage = reply.usage_metadata
        prompt_tokens = int(usage["input_tokens"]) if usage and usage.get("input_tokens") else None
        try:
            self.turns.record_turn(
                agent=self.agent,
                step=turn.step,
                output_tokens=output_tokens,
                prompt_tokens=turn.prompt_tokens if prompt_tokens is None else prompt_tokens,
                tool=str(reply.tool_calls[0]["name"]) if reply.tool_calls else None,
                session_id=turn.session_id,
                prompt_text=turn.prompt_text,
            )
        except Exception:  # the registry must never break the agent
            if not self._warned_turn:
                self._warned_turn = True
                logger.warning("tool registry failed to record a model turn", exc_info=True)

    def _rank(self, prediction: Prediction, prompt_tokens: int, strategy: KVStrategy) -> int:
        if self._priority is None:
            return lamps_priority(prediction, prompt_tokens, strategy, self._timing)
        if isinstance(self._priority, int):
            return self._priority
        return self._priority(prediction, prompt_tokens, strategy)


def lamps_priority(
    prediction: Prediction, prompt_tokens: int, strategy: KVStrategy, timing: Timing
) -> int:
    """LAMPS' rank of a turn: its predicted memory-time area in token·seconds, rounded (lower is
    served first, as vLLM's ``priority``)."""
    shape = TurnShape(
        prompt=prompt_tokens,
        output=prediction.output_tokens,
        has_tool=prediction.tool is not None,
        tool_duration=prediction.tool_duration,
        returned=prediction.returned_tokens,
        next_output=prediction.output_tokens,
    )
    area = turn_area(shape, strategy, timing)
    return min(MAX_PRIORITY, round(area)) if math.isfinite(area) and area > 0 else 0


def _timing(preset: Preset) -> Timing:
    """Client-side timing guess: a decode step of a lone request, chunked prefill, host swaps."""
    cost = preset.cost
    bytes_per_token = preset.kv_bytes_per_token
    return Timing(
        tau=cost.iteration_time(0, 1, 0),
        prefill_seconds=partial(cost.prefill_time, token_budget=preset.token_budget),
        transfer_seconds=lambda tokens: cost.swap_time(tokens * bytes_per_token),
    )


def message_chars(message: BaseMessage) -> int:
    """Characters of a message's text and tool calls."""
    content = message.content
    chars = len(content) if isinstance(content, str) else len(str(content))
    if isinstance(message, AIMessage):
        for call in message.tool_calls:
            chars += len(call["name"]) + len(str(call["args"]))
    return chars


def prompt_tail(messages: Sequence[BaseMessage], limit: int = PROMPT_TEXT_CHARS) -> str:
    """The last ``limit`` characters of the conversation as text, one ``type: content`` line per
    message (the last turns are what the learned predictor reads)."""
    parts: list[str] = []
    size = 0
    for message in reversed(messages):
        content = message.content
        text = content if isinstance(content, str) else str(content)
        parts.append(f"{message.type}: {text}")
        size += len(parts[-1]) + 1
        if size >= limit:
            break
    return "\n".join(reversed(parts))[-limit:]


def estimate_tokens(messages: Sequence[BaseMessage], *, extra_chars: int = 0) -> int:
    """Roughly how many tokens ``messages`` hold (characters / 4; cheap, no tokenizer)."""
    return round((extra_chars + sum(message_chars(m) for m in messages)) / CHARS_PER_TOKEN)


def output_token_count(reply: AIMessage) -> int:
    """Tokens the model generated: its usage report, else a character estimate (at least 1)."""
    usage = reply.usage_metadata
    if usage and usage.get("output_tokens"):
        return int(usage["output_tokens"])
    return max(1, round(message_chars(reply) / CHARS_PER_TOKEN))  # estimate_tokens([reply])


def _measure(prefix: _Prefix | None, messages: Sequence[BaseMessage]) -> tuple[int, int]:
    """(model replies so far, characters) of ``messages``; a conversation only grows, so the part
    measured at the session's previous call (``prefix``) is not measured again."""
    start, steps, chars = 0, 0, 0
    if prefix is not None and 0 < prefix.count <= len(messages):
        seen = messages[prefix.count - 1]
        if seen is prefix.last or (seen.id is not None and seen.id == prefix.last.id):
            start, steps, chars = prefix.count, prefix.steps, prefix.chars
    for message in messages[start:]:
        steps += isinstance(message, AIMessage)
        chars += message_chars(message)
    return steps, chars


def _trim(table: OrderedDict[Any, Any]) -> None:
    while len(table) > MAX_TRACKED:
        table.popitem(last=False)


def _notify(callback: Callable[..., None], **kwargs: Any) -> None:
    try:
        callback(**kwargs)
    except Exception:  # an engine hook must never break the agent
        logger.warning("tool-wait listener %r failed", callback, exc_info=True)
