"""Training on turn records (torch, CPU) and scoring against the two baselines.

Scores follow LAMPS: exact-bin accuracy (Acc-5 in the paper's naming), ±1-bin accuracy (Acc-15)
and mean absolute error in tokens.  Baselines: the history estimator (pre-warmed on the training
split, then learning online from each test turn after predicting it, as it does in an agent) and an
ordinary least-squares regression of output tokens on log(1 + prompt tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from lamps_agent.predictors.base import Outcome, PredictionQuery
from lamps_agent.predictors.history import HistoryPredictor
from lamps_agent.predictors.learned.encoder import Encoder
from lamps_agent.predictors.learned.features import (
    N_BINS,
    N_TEXT_STATS,
    TEXT_CHARS,
    FeatureSpec,
    TurnRecord,
    bin_of,
)
from lamps_agent.predictors.learned.model import (
    HeadShape,
    LengthModel,
    Objective,
    Point,
    build_head,
    default_bin_values,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """Defaults chosen by 5-fold cross-validation on the multi-API trace (docs/predictor.md)."""

    epochs: int = 80
    seed: int = 0
    hidden: int = 128
    dropout: float = 0.5
    lr: float = 2e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    objective: Objective = "bins"
    label_sigma: float = 1.0  # > 0: Gaussian soft labels over neighbouring bins
    point: Point = "median"
    text_chars: int = TEXT_CHARS
    threads: int = 1  # torch threads while fitting: a tiny MLP only loses from more (contention)


@dataclass(frozen=True, slots=True)
class Metrics:
    n: int
    exact_bin: float
    within_one_bin: float
    mae_tokens: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def score(predicted: Sequence[float] | np.ndarray, truth: Sequence[int]) -> Metrics:
    """Exact-bin and ±1-bin accuracy and MAE of predicted vs true output tokens."""
    pred = np.asarray(predicted, dtype=np.float64)
    true = np.asarray(truth, dtype=np.float64)
    if len(true) == 0:
        return Metrics(0, float("nan"), float("nan"), float("nan"))
    diff = np.abs(np.array([bin_of(p) for p in pred]) - np.array([bin_of(t) for t in true]))
    return Metrics(
        n=len(true),
        exact_bin=float(np.mean(diff == 0)),
        within_one_bin=float(np.mean(diff <= 1)),
        mae_tokens=float(np.mean(np.abs(pred - true))),
    )


def fit(records: Sequence[TurnRecord], encoder: Encoder | None, config: TrainConfig) -> LengthModel:
    """Train a head on ``records`` (the encoder stays frozen); deterministic for a given seed."""
    import torch

    if not records:
        raise ValueError("no training records")
    torch.manual_seed(config.seed)
    spec = FeatureSpec.from_records(records)
    text_dim = encoder.dim if encoder is not None else 0
    out_dim = N_BINS if config.objective == "bins" else 1
    shape = HeadShape(spec.dim + N_TEXT_STATS + text_dim, config.hidden, out_dim, config.dropout)
    head = build_head(shape)
    outputs = [r.output_tokens for r in records]
    model = LengthModel(
        spec=spec,
        encoder=encoder,
        head=head,
        shape=shape,
        objective=config.objective,
        bin_values=default_bin_values(outputs),
        text_chars=config.text_chars,
        point=config.point,
    )
    x = torch.from_numpy(model.features(records))
    y = _targets(outputs, config)
    before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        _train_loop(head, x, y, config)
    finally:
        torch.set_num_threads(before)
    head.eval()
    return model


def _targets(outputs: Sequence[int], config: TrainConfig) -> object:
    import torch

    if config.objective == "regression":
        return torch.log1p(torch.tensor(outputs, dtype=torch.float32)).unsqueeze(1)
    bins = torch.tensor([bin_of(o) for o in outputs])
    if config.label_sigma <= 0:
        return torch.nn.functional.one_hot(bins, N_BINS).float()
    grid = torch.arange(N_BINS, dtype=torch.float32)
    soft = torch.exp(-((grid[None, :] - bins[:, None]) ** 2) / (2 * config.label_sigma**2))
    return soft / soft.sum(dim=1, keepdim=True)


def _train_loop(head: object, x: object, y: object, config: TrainConfig) -> None:
    import torch

    assert isinstance(head, torch.nn.Module)
    assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    head.train()
    for _ in range(config.epochs):
        for idx in torch.split(torch.randperm(len(x), generator=gen), config.batch_size):
            out = head(x[idx])
            if config.objective == "regression":
                loss = (out - y[idx]).abs().mean()
            else:
                loss = -(y[idx] * torch.log_softmax(out, dim=1)).sum(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()


def query_of(record: TurnRecord) -> PredictionQuery:
    return PredictionQuery(
        agent=record.agent,
        step=record.step,
        tool=record.tool,
        prompt_tokens=record.prompt_tokens,
        prompt_text=record.prompt_text,
    )


def history_predictions(train: Sequence[TurnRecord], test: Sequence[TurnRecord]) -> np.ndarray:
    """The history estimator: warmed on ``train``, then predict-then-observe over ``test``."""
    history = HistoryPredictor()
    for r in train:
        history.observe(query_of(r), _outcome(r))
    preds = []
    for r in test:
        preds.append(history.predict_output_tokens(query_of(r)))
        history.observe(query_of(r), _outcome(r))
    return np.array(preds)


def _outcome(r: TurnRecord) -> Outcome:
    return Outcome(output_tokens=r.output_tokens, tool=r.tool, tool_duration=0.0, returned_tokens=0)


def length_regression_predictions(
    train: Sequence[TurnRecord], test: Sequence[TurnRecord]
) -> np.ndarray:
    """OLS of output tokens on [1, log(1 + prompt tokens)], clipped to >= 1."""

    def design(rs: Sequence[TurnRecord]) -> np.ndarray:
        p = np.log1p(np.array([r.prompt_tokens for r in rs], dtype=np.float64))
        return np.stack([np.ones_like(p), p], axis=1)

    y = np.array([r.output_tokens for r in train], dtype=np.float64)
    coef, *_ = np.linalg.lstsq(design(train), y, rcond=None)
    return np.clip(design(test) @ coef, 1.0, None) if test else np.zeros(0)


def compare(
    model: LengthModel, train: Sequence[TurnRecord], test: Sequence[TurnRecord]
) -> dict[str, Metrics]:
    """``learned`` vs ``history`` vs ``prompt-length`` on ``test`` (the model was fit on train)."""
    truth = [r.output_tokens for r in test]
    return {
        "learned": score(model.predict(test), truth),
        "history": score(history_predictions(train, test), truth),
        "prompt-length": score(length_regression_predictions(train, test), truth),
    }


def compare_slices(
    model: LengthModel, train: Sequence[TurnRecord], test: Sequence[TurnRecord]
) -> dict[str, dict[str, Metrics]]:
    """:func:`compare` on the test turns with prompt text (``text``) and without (``tokens``)."""
    slices = {
        "text": [r for r in test if r.prompt_text is not None],
        "tokens": [r for r in test if r.prompt_text is None],
    }
    return {name: compare(model, train, rs) for name, rs in slices.items() if rs}
