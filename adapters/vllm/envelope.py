"""Our per-turn hints in vLLM's typed KV-hint envelope (``vllm.v1.kv_hints``, vLLM 0.32+).

vLLM carries a ``KvHintsEnvelope`` of versioned ``KvHintAction``\\ s on each request
(``Request.kv_hints``), validated by the component that implements each action.  The plug-in
reads one action, type ``lamps.turn`` (:data:`lamps_agent.hints.KV_HINT_ACTION_TYPE`), whose
payload is exactly the ``vllm_xargs`` entries (:meth:`LampsHints.to_xargs`): one parser for both
transports (:func:`lamps_agent.hints.envelope_payload`, then :meth:`LampsHints.from_xargs`).  The
envelope wins where a request carries both; ``extra_args`` stays the fallback.

Where the request path accepts it: vLLM's engine API (``LLMEngine.add_request``,
``AsyncLLM.generate``: ``kv_hints=``).  vLLM 0.32's OpenAI server has no body field for it, so
HTTP clients (the LangChain middleware) keep sending ``vllm_xargs`` (docs/vllm.md).
"""

from __future__ import annotations

import uuid
from typing import Any

from lamps_agent.hints import LampsHints, envelope_payload

ENVELOPE_PROTOCOL_VERSION = "1"


def kv_hints_envelope(hints: LampsHints, *, message_id: str | None = None) -> Any:
    """``hints`` as a ``vllm.v1.kv_hints.KvHintsEnvelope`` of one ``lamps.turn`` action."""
    from vllm.v1.kv_hints import KvHintAction, KvHintsEnvelope

    action = KvHintAction(**hints.to_kv_hint_action())
    return KvHintsEnvelope(
        protocol_version=ENVELOPE_PROTOCOL_VERSION,
        message_id=message_id or uuid.uuid4().hex,
        actions=[action],
    )


def request_xargs(request: Any) -> Any:
    """The hints of a vLLM request in ``vllm_xargs`` form: its envelope's ``lamps.turn`` action
    if it carries one, else its sampling parameters' ``extra_args`` (None: neither)."""
    payload = envelope_payload(getattr(request, "kv_hints", None))
    if payload is not None:
        return payload
    params = getattr(request, "sampling_params", None)
    return getattr(params, "extra_args", None) if params is not None else None
