"""LangChain 1.x adapter: agent middleware, a hint-sending chat-model wrapper and a tool callback.

``LampsMiddleware`` for ``create_agent``; ``wrap(llm, registry=...)`` for custom graphs;
``LampsToolCallbackHandler`` for legacy ``AgentExecutor`` agents.  The hints' wire format is
``LampsHints`` (docs/hints.md).  ``adapters.langchain.testing`` has scripted chat models that work
inside ``create_agent``, for trying all of it offline.
"""

from adapters.langchain.callbacks import LampsToolCallbackHandler
from adapters.langchain.chat_model import LampsChatModel, wrap
from adapters.langchain.hints import (
    HINT_VERSION,
    XARGS_PREFIX,
    HintError,
    LampsHints,
    merge_extra_body,
)
from adapters.langchain.middleware import SESSION_HEADER, LampsMiddleware, hint_body
from adapters.langchain.planner import (
    HintPlanner,
    ModelTurn,
    ToolRecorder,
    ToolWaitListener,
    TurnRecorder,
)

__all__ = [
    "HINT_VERSION",
    "SESSION_HEADER",
    "XARGS_PREFIX",
    "HintError",
    "HintPlanner",
    "LampsChatModel",
    "LampsHints",
    "LampsMiddleware",
    "LampsToolCallbackHandler",
    "ModelTurn",
    "ToolRecorder",
    "ToolWaitListener",
    "TurnRecorder",
    "hint_body",
    "merge_extra_body",
    "wrap",
]
