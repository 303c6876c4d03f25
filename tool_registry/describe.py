"""What ``register`` learns from a tool object: a LangChain ``BaseTool`` (duck-typed on ``name``,
``description`` and ``metadata``; LangChain is never imported) or a plain callable."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ToolFacts:
    name: str | None
    description: str | None
    duration_hint: object = None
    api_type: object = None


def describe(tool: object) -> ToolFacts:
    """Name, description and hints (from ``metadata["duration_hint"/"api_type"]``) of ``tool``."""
    if isinstance(tool, str):
        return ToolFacts(name=tool, description=None)
    name = getattr(tool, "name", None)
    if isinstance(name, str):  # a LangChain BaseTool, or anything shaped like one
        metadata = getattr(tool, "metadata", None)
        metadata = metadata if isinstance(metadata, Mapping) else {}
        description = getattr(tool, "description", None)
        return ToolFacts(
            name=name,
            description=description if isinstance(description, str) else None,
            duration_hint=metadata.get("duration_hint"),
            api_type=metadata.get("api_type"),
        )
    if callable(tool):
        name = getattr(tool, "__name__", None)
        if name == "<lambda>":
            name = None
        doc = inspect.getdoc(tool)
        return ToolFacts(
            name=name if isinstance(name, str) else None,
            description=doc.strip().splitlines()[0] if doc else None,
        )
    raise ValueError(f"cannot register {tool!r}: pass a LangChain tool, a callable or a name")
