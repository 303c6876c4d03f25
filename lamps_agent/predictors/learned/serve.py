"""The learned predictor in the hot path: batched, cached, hot-reloaded, never raising.

Output length comes from the trained :class:`LengthModel`; tool duration and returned tokens come
from an inner :class:`HistoryPredictor` (which also answers the output length whenever the model
cannot: no model loaded, or any error).  Text embeddings are cached per prompt window (LRU), so a
prompt seen again - a retry, the vLLM plug-in predicting what the agent already predicted - costs a
dictionary look-up.  The server checks the store's ``CURRENT`` file at most every
``reload_interval`` seconds and swaps in a newly saved version without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lamps_agent.predictors.base import (
    DEFAULT_OUTPUT_TOKENS,
    DurationSource,
    Outcome,
    Prediction,
    PredictionQuery,
    Predictor,
)
from lamps_agent.predictors.history import HistoryPredictor
from lamps_agent.predictors.learned.encoder import CachedEncoder
from lamps_agent.predictors.learned.model import LengthModel
from lamps_agent.predictors.learned.store import ModelStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ServeStats:
    num_predictions: int = 0
    num_fallbacks: int = 0  # answered by the history estimator (no model, or an error)
    num_without_text: int = 0  # answered by the model from the cheap features alone
    num_reloads: int = 0


class LearnedPredictor(Predictor):
    """Predicts output length with a trained model; see the module docstring."""

    name = "learned"

    def __init__(
        self,
        model: LengthModel | None = None,
        *,
        store: ModelStore | None = None,
        hints: DurationSource | None = None,
        fallback: HistoryPredictor | None = None,
        cache_size: int = 4096,
        reload_interval: float = 2.0,
    ) -> None:
        self.fallback = fallback or HistoryPredictor(hints=hints)
        self.store = store
        self.cache_size = cache_size
        self.reload_interval = reload_interval
        self.stats = ServeStats()
        self.version: str | None = None
        self._model: LengthModel | None = None
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._current_seen: str | None = None
        if model is not None:
            self._install(model, version=None)
        elif store is not None:
            self.maybe_reload(force=True)

    @property
    def model(self) -> LengthModel | None:
        return self._model

    def _install(self, model: LengthModel, *, version: str | None) -> None:
        if model.encoder is not None and not isinstance(model.encoder, CachedEncoder):
            model.encoder = CachedEncoder(model.encoder, max_entries=self.cache_size)
        with self._lock:
            self._model, self.version = model, version

    def maybe_reload(self, *, force: bool = False) -> bool:
        """Load the store's current version if it changed; returns True when a model was swapped
        in.  Cheap when nothing changed (one small file read every ``reload_interval``)."""
        now = time.monotonic()
        if self.store is None or (not force and now < self._next_check):
            return False
        self._next_check = now + self.reload_interval
        current = self.store.current()
        if current is None or current == self._current_seen:
            return False
        self._current_seen = current
        try:
            version, model = self.store.load(current)
        except Exception as exc:  # noqa: BLE001 - a bad saved model must not stop the agent
            log.warning(
                "cannot load output-length model %s: %s; keeping the previous one", current, exc
            )
            return False
        self._install(model, version=version)
        self.stats.num_reloads += 1
        log.info("output-length model %s loaded from %s", version, self.store.dir)
        return True

    def predict_output_tokens_many(self, queries: Sequence[PredictionQuery]) -> list[float]:
        """Output-length predictions for a batch (one encoder call for the uncached texts)."""
        self.maybe_reload()
        model = self._model
        self.stats.num_predictions += len(queries)
        if model is not None and queries:
            try:
                values = model.predict(queries)
                self.stats.num_without_text += sum(model.window(q) is None for q in queries)
                return [max(float(v), 1.0) for v in values]
            except Exception as exc:  # noqa: BLE001 - predict() must never raise
                log.debug("learned prediction failed (%s); using history", exc)
        self.stats.num_fallbacks += len(queries)
        return [self._fallback_tokens(q) for q in queries]

    def _fallback_tokens(self, query: PredictionQuery) -> float:
        try:
            return self.fallback.predict_output_tokens(query)
        except Exception:  # noqa: BLE001 - e.g. a non-string agent name in a malformed query
            return DEFAULT_OUTPUT_TOKENS

    def predict_many(self, queries: Sequence[PredictionQuery]) -> list[Prediction]:
        tokens = self.predict_output_tokens_many(queries)
        return [self._prediction(q, t) for q, t in zip(queries, tokens, strict=True)]

    def predict(self, query: PredictionQuery) -> Prediction:
        return self.predict_many([query])[0]

    def _prediction(self, query: PredictionQuery, tokens: float) -> Prediction:
        try:
            rest = self.fallback.predict(query)
        except Exception:  # noqa: BLE001
            rest = Prediction(output_tokens=tokens, tool=None, tool_duration=0.0, returned_tokens=0)
        return Prediction(
            output_tokens=tokens,
            tool=rest.tool,
            tool_duration=rest.tool_duration,
            returned_tokens=rest.returned_tokens,
        )

    def observe(self, query: PredictionQuery, outcome: Outcome) -> None:
        self.fallback.observe(query, outcome)


_warned = False


def make_learned_predictor(
    root: str | Path | None = None,
    *,
    hints: DurationSource | None = None,
    reload_interval: float = 2.0,
) -> Predictor:
    """The learned predictor over the saved model in ``root`` (default: next to the registry),
    or - when the ``learned`` extra or a saved model is missing - a :class:`HistoryPredictor`,
    with one logged warning per process."""
    global _warned
    store = ModelStore(root)
    reason = None
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        reason = f"the 'learned' extra is not installed ({exc})"
    if reason is None and store.current() is None:
        reason = f"no trained model under {store.dir} (run `lamps-agent predictor train`)"
    if reason is None:
        predictor = LearnedPredictor(store=store, hints=hints, reload_interval=reload_interval)
        if predictor.model is not None:
            return predictor
        reason = f"the model under {store.dir} could not be loaded"
    if not _warned:
        log.warning("learned output-length predictor unavailable: %s; using history", reason)
        _warned = True
    return HistoryPredictor(hints=hints)
