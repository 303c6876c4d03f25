"""The learned pre-API output-length predictor (LAMPS' predictor): a frozen MiniLM-derived text
embedding plus cheap features into a small MLP over 50 bins of 10 tokens, trained offline with torch
on CPU and served behind the :class:`~lamps_agent.predictors.base.Predictor` interface.

torch / transformers / the MiniLM wheel are the optional ``learned`` extra: nothing here imports
them at module level, and :func:`make_learned_predictor` falls back to the history estimator (with
one logged warning) when they or a saved model are missing.  See docs/predictor.md.
"""

from lamps_agent.predictors.learned.data import jsonl_records, split_by_group, trace_records
from lamps_agent.predictors.learned.features import BIN_WIDTH, N_BINS, TurnRecord, bin_of
from lamps_agent.predictors.learned.serve import (
    LearnedPredictor,
    ServeStats,
    make_learned_predictor,
)
from lamps_agent.predictors.learned.store import ModelStore
from lamps_agent.predictors.learned.trace_text import TraceTextPredictor

__all__ = [
    "BIN_WIDTH",
    "N_BINS",
    "LearnedPredictor",
    "ModelStore",
    "ServeStats",
    "TraceTextPredictor",
    "TurnRecord",
    "bin_of",
    "jsonl_records",
    "make_learned_predictor",
    "split_by_group",
    "trace_records",
]
