"""The learned output-length model: text embedding + cheap features -> an MLP over length bins.

``objective="bins"`` (the default, as in LAMPS) predicts a distribution over 50 bins of 10 tokens
and answers the arg-max bin's value; ``objective="regression"`` predicts log(1 + tokens) with an L1
loss (the median).  docs/predictor.md has the measurement that chose bins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from lamps_agent.predictors.learned.encoder import Encoder
from lamps_agent.predictors.learned.features import (
    BIN_WIDTH,
    N_BINS,
    N_TEXT_STATS,
    TEXT_CHARS,
    FeatureSpec,
    text_stats,
    text_window,
)

Objective = Literal["bins", "regression"]
Point = Literal["argmax", "median"]  # which value of the bin distribution a prediction answers


class TurnLike(Protocol):
    """What the model reads of a turn (a :class:`TurnRecord` or a ``PredictionQuery``)."""

    @property
    def agent(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def tool(self) -> str | None: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def prompt_text(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class HeadShape:
    in_dim: int
    hidden: int
    out_dim: int
    dropout: float


def build_head(shape: HeadShape) -> Any:
    """A two-layer MLP (``torch.nn.Sequential``)."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(shape.in_dim, shape.hidden),
        nn.ReLU(),
        nn.Dropout(shape.dropout),
        nn.Linear(shape.hidden, shape.out_dim),
    )


def default_bin_values(outputs: Sequence[int] = ()) -> np.ndarray:
    """Bin centres; the open-ended last bin answers the mean of the training lengths in it."""
    values = np.arange(N_BINS, dtype=np.float64) * BIN_WIDTH + BIN_WIDTH / 2
    tail = [o for o in outputs if o >= (N_BINS - 1) * BIN_WIDTH]
    if tail:
        values[-1] = float(np.mean(tail))
    return values


class LengthModel:
    """Inference for one trained model: ``features`` -> ``predict_features`` -> tokens.

    Callers that cache embeddings (the server) use :meth:`embed` and :meth:`assemble`; others use
    :meth:`predict`.
    """

    def __init__(
        self,
        *,
        spec: FeatureSpec,
        encoder: Encoder | None,
        head: Any,
        shape: HeadShape,
        objective: Objective,
        bin_values: np.ndarray,
        text_chars: int = TEXT_CHARS,
        point: Point = "median",
    ) -> None:
        import torch

        self._torch = torch
        self.spec = spec
        self.encoder = encoder
        self.head = head.eval()
        self.shape = shape
        self.objective: Objective = objective
        self.bin_values = np.asarray(bin_values, dtype=np.float64)
        self.text_chars = text_chars
        self.point: Point = point

    @property
    def text_dim(self) -> int:
        return self.encoder.dim if self.encoder is not None else 0

    def window(self, turn: TurnLike) -> str | None:
        return text_window(turn.prompt_text, self.text_chars) if self.encoder else None

    def embed(self, windows: Sequence[str]) -> np.ndarray:
        if self.encoder is None or not windows:
            return np.zeros((len(windows), self.text_dim), np.float32)
        return self.encoder.encode(windows)

    @property
    def in_dim(self) -> int:
        return self.text_dim + N_TEXT_STATS + self.spec.dim

    def assemble(
        self, turn: TurnLike, window: str | None, embedding: np.ndarray | None
    ) -> np.ndarray:
        """The model input of one turn; ``window=None`` means no text (zeros, flag off)."""
        cheap = self.spec.vector(
            agent=turn.agent,
            step=turn.step,
            tool=turn.tool,
            prompt_tokens=turn.prompt_tokens,
            has_text=window is not None,
        )
        if embedding is None or window is None:
            embedding = np.zeros(self.text_dim, np.float32)
        return np.concatenate([embedding.astype(np.float32), text_stats(window), cheap])

    def features(self, turns: Sequence[TurnLike]) -> np.ndarray:
        windows = [self.window(t) for t in turns]
        present = [w for w in windows if w is not None]
        vectors = iter(self.embed(present))
        rows = [
            self.assemble(t, w, None if w is None else next(vectors))
            for t, w in zip(turns, windows, strict=True)
        ]
        return np.stack(rows) if rows else np.zeros((0, self.shape.in_dim), np.float32)

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """Predicted output tokens for each row of model inputs."""
        torch = self._torch
        with torch.inference_mode():
            out = self.head(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        values: np.ndarray
        if self.objective == "regression":
            values = np.clip(np.expm1(out[:, 0].double().numpy()), 1.0, None)
        elif self.point == "argmax":
            values = self.bin_values[out.argmax(dim=1).numpy()]
        else:  # the median bin: the best point for absolute error
            cdf = torch.softmax(out.double(), dim=1).cumsum(dim=1)
            median = (cdf < 0.5).sum(dim=1).clamp(max=len(self.bin_values) - 1)
            values = self.bin_values[median.numpy()]
        return values

    def predict(self, turns: Sequence[TurnLike]) -> np.ndarray:
        return self.predict_features(self.features(turns))
