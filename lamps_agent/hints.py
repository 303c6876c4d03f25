"""The hint wire format (version 1): what an agent tells the scheduler with each model call.

A :class:`LampsHints` travels in the body of an OpenAI-compatible chat-completion request:
``priority`` and ``session_id`` as top-level fields (vLLM reads both natively) and everything else
as flat ``vllm_xargs`` entries prefixed ``lamps_`` (vLLM hands them to the engine as
``sampling_params.extra_args``).  The schema is documented in docs/hints.md; the vLLM plug-in
parses it back with :meth:`LampsHints.from_body` or :meth:`LampsHints.from_xargs`.  It lives in the
core so that both ends — the LangChain middleware and the vLLM scheduler — import it without
importing each other's framework.

A new optional key keeps the version; renaming, removing or re-typing a key bumps it, and readers
reject versions they do not know.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from lamps_agent.request import KVStrategy

HINT_VERSION: Final = 1
XARGS_PREFIX: Final = "lamps_"
# The same hints as one action of vLLM's typed KV-hint envelope (``vllm.v1.kv_hints``, a request's
# ``kv_hints``): its payload is the ``vllm_xargs`` entries, read by the same parser.
KV_HINT_ACTION_TYPE: Final = "lamps.turn"
KV_HINT_ACTION_VERSION: Final = str(HINT_VERSION)
MAX_PRIORITY: Final = 2**31 - 1
MAX_SESSION_ID_LENGTH: Final = 256

_K_VERSION = "lamps_hint_version"
_K_SESSION = "lamps_session_id"
_K_PRIORITY = "lamps_priority"
_K_AGENT = "lamps_agent"
_K_TENANT = "lamps_tenant"
_K_STEP = "lamps_step"
_K_OUTPUT = "lamps_output_tokens"
_K_TOOL = "lamps_tool"
_K_DURATION = "lamps_tool_duration"
_K_STRATEGY = "lamps_kv_strategy"
_K_LAST_TOOL = "lamps_last_tool"
_K_LAST_DURATION = "lamps_last_tool_duration"


class HintError(ValueError):
    """A hint is missing, of the wrong type or out of range."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LampsHints:
    """Per-model-call scheduling hints (wire version :data:`HINT_VERSION`).

    ``tool`` is the tool the turn is predicted to end in (``None``: a final answer), and
    ``tool_duration`` its predicted duration in seconds.  ``last_tool`` / ``last_tool_duration``
    report the tool call that just returned (measured), so a remote engine learns how long the
    agent was away.  ``priority`` follows vLLM: lower is served first.  ``tenant`` names the
    client (optional; the engine's fair share gives each tenant its share: :mod:`lamps_agent.
    scheduler.fair_share`).
    """

    session_id: str
    priority: int
    agent: str
    step: int
    output_tokens: int
    tool: str | None
    tool_duration: float
    kv_strategy: KVStrategy
    last_tool: str | None = None
    last_tool_duration: float | None = None
    tenant: str | None = None
    version: int = HINT_VERSION

    def __post_init__(self) -> None:
        # The hints a client builds are well-formed: one expression accepts them (a model call
        # builds one per call); anything else goes through the checks that name the bad field.
        tool, last_tool = self.tool, self.last_tool
        if (
            type(self.session_id) is str
            and 0 < len(self.session_id) <= MAX_SESSION_ID_LENGTH
            and type(self.priority) is int
            and -MAX_PRIORITY - 1 <= self.priority <= MAX_PRIORITY
            and type(self.agent) is str
            and self.agent != ""
            and type(self.step) is int
            and 0 <= self.step <= MAX_PRIORITY
            and type(self.output_tokens) is int
            and 1 <= self.output_tokens <= MAX_PRIORITY
            and type(self.tool_duration) is float
            and (
                (tool is None and self.tool_duration == 0.0)
                or (type(tool) is str and tool != "" and 0.0 <= self.tool_duration < math.inf)
            )
            and type(self.kv_strategy) is KVStrategy
            and (
                (last_tool is None and self.last_tool_duration is None)
                or (
                    type(last_tool) is str
                    and last_tool != ""
                    and type(self.last_tool_duration) is float
                    and 0.0 <= self.last_tool_duration < math.inf
                )
            )
            and (self.tenant is None or _is_tenant(self.tenant))
            and self.version == HINT_VERSION
        ):
            return
        self._check()

    def _check(self) -> None:
        if self.version != HINT_VERSION:
            raise HintError(
                f"unsupported hint version {self.version} (this reader knows {HINT_VERSION})"
            )
        _check_str("session_id", self.session_id, allow_empty=False)
        if len(self.session_id) > MAX_SESSION_ID_LENGTH:
            raise HintError(f"session_id is longer than {MAX_SESSION_ID_LENGTH} characters")
        _check_int("priority", self.priority, low=-MAX_PRIORITY - 1, high=MAX_PRIORITY)
        _check_str("agent", self.agent, allow_empty=False)
        _check_int("step", self.step, low=0, high=MAX_PRIORITY)
        _check_int("output_tokens", self.output_tokens, low=1, high=MAX_PRIORITY)
        if self.tool is not None:
            _check_str("tool", self.tool, allow_empty=False)
        _check_seconds("tool_duration", self.tool_duration)
        if self.tool is None and self.tool_duration != 0:
            raise HintError("tool_duration must be 0 when no tool call is predicted")
        if not isinstance(self.kv_strategy, KVStrategy):
            raise HintError(f"kv_strategy must be a KVStrategy, got {self.kv_strategy!r}")
        if (self.last_tool is None) != (self.last_tool_duration is None):
            raise HintError("last_tool and last_tool_duration come together or not at all")
        if self.last_tool is not None:
            _check_str("last_tool", self.last_tool, allow_empty=False)
            _check_seconds("last_tool_duration", self.last_tool_duration)
        if self.tenant is not None:
            _check_str("tenant", self.tenant, allow_empty=False)
            if len(self.tenant) > MAX_SESSION_ID_LENGTH:
                raise HintError(f"tenant is longer than {MAX_SESSION_ID_LENGTH} characters")

    def to_xargs(self) -> dict[str, str | int | float]:
        """The flat ``vllm_xargs`` entries (str / int / float values only)."""
        xargs: dict[str, str | int | float] = {
            _K_VERSION: self.version,
            _K_SESSION: self.session_id,
            _K_PRIORITY: self.priority,
            _K_AGENT: self.agent,
            _K_STEP: self.step,
            _K_OUTPUT: self.output_tokens,
            _K_TOOL: self.tool or "",
            _K_DURATION: float(self.tool_duration),
            _K_STRATEGY: self.kv_strategy._value_,  # not .value: a descriptor call per use
        }
        if self.last_tool is not None and self.last_tool_duration is not None:
            xargs[_K_LAST_TOOL] = self.last_tool
            xargs[_K_LAST_DURATION] = float(self.last_tool_duration)
        if self.tenant is not None:
            xargs[_K_TENANT] = self.tenant
        return xargs

    def to_kv_hint_action(self, action_id: str = "lamps") -> dict[str, Any]:
        """This turn's hints as one action of vLLM's KV-hint envelope (the fields of
        ``vllm.v1.kv_hints.KvHintAction``; ``adapters/vllm/envelope.py`` builds the struct)."""
        return {
            "action_id": action_id,
            "action_type": KV_HINT_ACTION_TYPE,
            "action_version": KV_HINT_ACTION_VERSION,
            "payload": dict(self.to_xargs()),
        }

    def to_body(self) -> dict[str, Any]:
        """The request-body fields: ``priority``, ``session_id`` and ``vllm_xargs``."""
        return {
            "priority": self.priority,
            "session_id": self.session_id,
            "vllm_xargs": self.to_xargs(),
        }

    @classmethod
    def from_xargs(
        cls,
        xargs: Mapping[str, Any],
        *,
        session_id: str | None = None,
        priority: int | None = None,
    ) -> LampsHints:
        """Parse ``lamps_*`` entries; ``session_id`` / ``priority`` given here (the request's own
        fields) win over their ``lamps_`` copies.  Keys without the prefix are ignored."""
        if _K_VERSION not in xargs:
            raise HintError(f"no {_K_VERSION} in vllm_xargs: the request carries no lamps hints")
        version = xargs[_K_VERSION]
        _check_int(_K_VERSION, version, low=1, high=MAX_PRIORITY)
        if version != HINT_VERSION:
            raise HintError(
                f"unsupported hint version {version} (this reader knows {HINT_VERSION})"
            )
        tool = _get(xargs, _K_TOOL, str)
        raw_strategy = _get(xargs, _K_STRATEGY, str)  # a missing key is a HintError too
        try:
            strategy = KVStrategy(raw_strategy)
        except ValueError:
            valid = ", ".join(s.value for s in KVStrategy)
            raise HintError(f"{_K_STRATEGY} must be one of {valid}, got {raw_strategy!r}") from None
        last_tool = xargs.get(_K_LAST_TOOL)
        last_duration = xargs.get(_K_LAST_DURATION)
        return cls(
            version=version,
            session_id=session_id if session_id is not None else _get(xargs, _K_SESSION, str),
            priority=priority if priority is not None else _get(xargs, _K_PRIORITY, int),
            agent=_get(xargs, _K_AGENT, str),
            step=_get(xargs, _K_STEP, int),
            output_tokens=_get(xargs, _K_OUTPUT, int),
            tool=tool or None,
            tool_duration=_as_float(_K_DURATION, xargs.get(_K_DURATION)),
            kv_strategy=strategy,
            last_tool=last_tool,
            last_tool_duration=None
            if last_duration is None
            else _as_float(_K_LAST_DURATION, last_duration),
            tenant=xargs.get(_K_TENANT),
        )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> LampsHints:
        """Parse a whole chat-completion request body (the inverse of :meth:`to_body`)."""
        xargs = body.get("vllm_xargs")
        if not isinstance(xargs, Mapping):
            raise HintError("the request body has no vllm_xargs object")
        return cls.from_xargs(
            xargs, session_id=body.get("session_id"), priority=body.get("priority")
        )


def merge_extra_body(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge request-body layers, later ones winning key by key; ``vllm_xargs`` dicts merge too.

    Call it as ``merge_extra_body(hints.to_body(), constructor_extra_body, per_call_extra_body)``
    so the user's own keys are never dropped and win where they collide with a hint.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        if not layer:
            continue
        for key, value in layer.items():
            old = merged.get(key)
            if key == "vllm_xargs" and isinstance(old, Mapping) and isinstance(value, Mapping):
                merged[key] = {**old, **value}
            else:
                merged[key] = value
    return merged


def _get(xargs: Mapping[str, Any], key: str, kind: type[Any]) -> Any:
    if key not in xargs:
        raise HintError(f"missing hint {key}")
    value = xargs[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise HintError(f"hint {key} must be {kind.__name__}, got {value!r}")
    return value


def _as_float(key: str, value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise HintError(f"hint {key} must be a number, got {value!r}")
    return float(value)


def _check_str(name: str, value: Any, *, allow_empty: bool) -> None:
    if not isinstance(value, str) or (not allow_empty and not value):
        raise HintError(f"{name} must be a non-empty string, got {value!r}")


def _check_int(name: str, value: Any, *, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise HintError(f"{name} must be an int in [{low}, {high}], got {value!r}")


def _check_seconds(name: str, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise HintError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise HintError(f"{name} must be finite and >= 0, got {value!r}")


def tenant_of(xargs: Any) -> str | None:
    """The tenant ``xargs`` name when the rest of the hints cannot be read: a tenant the server
    derived (``adapters/vllm/tenant.py``) holds even when the client's own hints are malformed, so
    a malformed hint is no way out of one's share.  None where none is named or it is no valid
    name."""
    if not isinstance(xargs, dict):
        return None
    tenant = xargs.get(_K_TENANT)
    return tenant if _is_tenant(tenant) else None


def _is_tenant(value: Any) -> bool:
    """A valid tenant name: a non-empty string of at most ``MAX_SESSION_ID_LENGTH`` characters
    (the fast path of :class:`LampsHints` validation, and :func:`tenant_of`)."""
    return type(value) is str and 0 < len(value) <= MAX_SESSION_ID_LENGTH


def envelope_payload(envelope: Any) -> dict[str, Any] | None:
    """The ``vllm_xargs``-form hints carried by a KV-hint envelope (``vllm.v1.kv_hints.
    KvHintsEnvelope``, or its JSON form: a mapping with ``actions``): the payload of its first
    ``lamps.turn`` action of this version.  None where the envelope carries none (another
    component's actions only, another version, or not an envelope): the request's
    ``extra_args`` are read instead."""
    actions = _field(envelope, "actions")
    if not isinstance(actions, list | tuple):
        return None
    for action in actions:
        payload = _field(action, "payload")
        if (
            _field(action, "action_type") == KV_HINT_ACTION_TYPE
            and _field(action, "action_version") == KV_HINT_ACTION_VERSION
            and isinstance(payload, dict)
        ):
            return payload
    return None


def _field(obj: Any, name: str) -> Any:
    """A field of a msgspec struct (an attribute) or of its JSON form (a key)."""
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
