"""The registry's model turns as training records of the learned output-length predictor.

``lamps-agent predictor train --registry URL`` reads them through :func:`training_records`.  Each
session is one conversation group, so a train/test split never separates a session's turns.
"""

from __future__ import annotations

from lamps_agent.predictors.learned.features import TurnRecord as TrainingRecord
from tool_registry.registry import ToolRegistry
from tool_registry.types import TurnRecord


def training_record(turn: TurnRecord) -> TrainingRecord:
    """One stored turn as a training record; a turn without a session is its own group."""
    return TrainingRecord(
        agent=turn.agent,
        step=turn.step,
        tool=turn.tool,
        prompt_tokens=turn.prompt_tokens or 0,
        output_tokens=turn.output_tokens,
        prompt_text=turn.prompt_text,
        group=f"session:{turn.session_id}" if turn.session_id else f"turn:{turn.id}",
    )


def training_records(url: str | None, *, agent: str | None = None) -> list[TrainingRecord]:
    """Every model turn stored in the registry at ``url`` (of ``agent``), as training records."""
    with ToolRegistry(url) as registry:
        return [training_record(turn) for turn in registry.iter_turns(agent=agent)]
