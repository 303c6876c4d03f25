"""Synthetic turn records for the learned-predictor tests."""

from __future__ import annotations

from lamps_agent.predictors.learned.features import TurnRecord


def synthetic_records(n_groups: int = 60, turns: int = 4) -> list[TurnRecord]:
    """Length depends only on the prompt's words: 'brief' -> 15 tokens, 'essay' -> 255 tokens.
    Everything else (agent, tool, step, prompt length) is identical."""
    records = []
    for g in range(n_groups):
        for step in range(turns):
            long = (g + step) % 2 == 0
            word = "essay" if long else "brief"
            records.append(
                TurnRecord(
                    agent="writer",
                    step=step,
                    tool="search",
                    prompt_tokens=100,
                    output_tokens=255 if long else 15,
                    prompt_text=f"conversation {g}: please write a {word} answer about topic {step}",
                    group=f"c{g}",
                )
            )
    return records
