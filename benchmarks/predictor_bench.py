"""The learned output-length predictor: cross-validated accuracy, serving latency and footprint,
and its effect on LAMPS scheduling in the simulator.

    python benchmarks/predictor_bench.py accuracy --folds 5
    python benchmarks/predictor_bench.py latency --model /tmp/pstore
    python benchmarks/predictor_bench.py sim --folds 5 --model /tmp/pstore

``--model`` is a store root written by ``lamps-agent predictor train --out ROOT``; ``latency``
serves its current version, ``accuracy`` / ``sim`` reuse its distilled MiniLM token table.
Everything runs with ``torch.set_num_threads(1)``.  ``sim`` never lets a model predict a
conversation it was trained on: one model per fold (split by conversation), each predicting the
programs of its held-out fold.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lamps_agent.policies import make_policy
from lamps_agent.policies.lamps import LampsPolicy
from lamps_agent.predictors import (
    HistoryPredictor,
    OraclePredictor,
    Outcome,
    Prediction,
    PredictionQuery,
    Predictor,
)
from lamps_agent.predictors.learned import LearnedPredictor, ModelStore, TraceTextPredictor
from lamps_agent.predictors.learned.data import (
    conversation_group,
    fold_groups,
    trace_records,
    trace_texts,
)
from lamps_agent.predictors.learned.encoder import CachedEncoder, Encoder, StaticEncoder
from lamps_agent.predictors.learned.features import TurnRecord
from lamps_agent.predictors.learned.model import LengthModel
from lamps_agent.predictors.learned.train import (
    TrainConfig,
    fit,
    history_predictions,
    length_regression_predictions,
    score,
)
from lamps_agent.presets import load_preset
from lamps_agent.sim import RunLabels, Simulator
from lamps_agent.workloads import load_trace, poisson_workload

TRACE = "multi-api"


def _static(root: Path | None) -> Encoder:
    return CachedEncoder(StaticEncoder(ModelStore(root).static_table()), max_entries=None)


def _folds(
    records: Sequence[TurnRecord], k: int, seed: int
) -> list[tuple[list[TurnRecord], list[TurnRecord]]]:
    fold = fold_groups(records, folds=k, seed=seed)
    return [
        ([r for r in records if fold[r.group] != i], [r for r in records if fold[r.group] == i])
        for i in range(k)
    ]


# -- accuracy ---------------------------------------------------------------------------------
def accuracy(args: argparse.Namespace) -> None:
    records = trace_records(TRACE)
    static = _static(args.model)
    variants: dict[str, tuple[Encoder | None, TrainConfig]] = {
        "bins, static MiniLM (default)": (static, TrainConfig(seed=args.seed)),
        "bins, arg-max point": (static, TrainConfig(seed=args.seed, point="argmax")),
        "bins, hard labels": (static, TrainConfig(seed=args.seed, label_sigma=0.0)),
        "regression (L1 on log tokens)": (
            static,
            TrainConfig(seed=args.seed, objective="regression"),
        ),
        "bins, no text (features only)": (None, TrainConfig(seed=args.seed)),
    }
    if args.contextual:
        from lamps_agent.predictors.learned.encoder import ContextualEncoder

        contextual = CachedEncoder(ContextualEncoder(max_tokens=128), max_entries=None)
        variants["bins, MiniLM transformer (128 tokens)"] = (
            contextual,
            TrainConfig(seed=args.seed),
        )
    pooled: dict[str, tuple[list[float], list[int]]] = {}

    def add(name: str, pred: Sequence[float], test: Sequence[TurnRecord]) -> None:
        p, t = pooled.setdefault(name, ([], []))
        p.extend(float(x) for x in pred)
        t.extend(r.output_tokens for r in test)

    for train, test in _folds(records, args.folds, args.seed):
        text = [r for r in test if r.prompt_text is not None]
        add("history estimator", history_predictions(train, text), text)
        add("prompt-length regression", length_regression_predictions(train, text), text)
        for name, (encoder, config) in variants.items():
            add(name, fit(train, encoder, config).predict(text), text)
    print(f"\n{args.folds}-fold cross-validation by conversation, text-form segments of {TRACE}\n")
    print("| predictor | n | exact bin | ±1 bin | MAE (tokens) |\n|---|---:|---:|---:|---:|")
    for name, (p, t) in pooled.items():
        m = score(p, t)
        print(
            f"| {name} | {m.n} | {m.exact_bin:.3f} | {m.within_one_bin:.3f} | {m.mae_tokens:.1f} |"
        )


# -- latency ----------------------------------------------------------------------------------
def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _queries(n: int) -> list[PredictionQuery]:
    records = [r for r in trace_records(TRACE) if r.prompt_text is not None]
    return [
        PredictionQuery(
            agent=r.agent,
            step=r.step,
            tool=r.tool,
            prompt_tokens=r.prompt_tokens,
            prompt_text=f"[{i}] {r.prompt_text}",  # distinct texts: no accidental cache hits
        )
        for i, r in enumerate(records[i % len(records)] for i in range(n))
    ]


def _timed(fn: Any, batches: Sequence[Sequence[PredictionQuery]]) -> list[float]:
    out = []
    for batch in batches:
        t0 = time.perf_counter()
        fn(batch)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _row(name: str, ms: list[float], per: int) -> None:
    p50, p99 = np.percentile(ms, [50, 99])
    print(f"| {name} | {len(ms)} | {p50:.2f} | {p99:.2f} | {p50 / per:.3f} | {p99 / per:.3f} |")


def latency(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    rss0 = _rss_mb()
    store = ModelStore(args.model)
    version, model = store.load()
    rss1 = _rss_mb()
    table = getattr(model.encoder, "table", np.zeros(0)).nbytes
    cold = LearnedPredictor(model, cache_size=0)
    queries = _queries(args.n)
    cold.predict_many(queries[:32])  # warm-up (allocators, tokenizer)
    print(f"\nmodel {store.dir / version}; torch threads = 1\n")
    print("| case | calls | p50 ms/call | p99 ms/call | p50 ms/prompt | p99 ms/prompt |")
    print("|---|---:|---:|---:|---:|---:|")
    _row("batch 1, uncached", _timed(cold.predict_many, [[q] for q in queries]), 1)
    batches = [queries[i : i + 32] for i in range(0, len(queries) - 31, 32)]
    _row("batch 32, uncached", _timed(cold.predict_many, batches), 32)
    warm = LearnedPredictor(store.load()[1])
    warm.predict_many(queries)
    _row("batch 1, cached prompt", _timed(warm.predict_many, [[q] for q in queries]), 1)
    if args.contextual:
        from lamps_agent.predictors.learned.encoder import ContextualEncoder

        ctx = ContextualEncoder(max_tokens=128)
        few = [[q.prompt_text or ""] for q in queries[: args.n // 10]]
        _row("MiniLM transformer (128 tokens), batch 1", _timed(ctx.encode, few), 1)
    head = sum(p.numel() * p.element_size() for p in model.head.parameters())
    print(
        f"\nfootprint: head {head / 1e6:.2f} MB ({sum(p.numel() for p in model.head.parameters())}"
        f" parameters), token table {table / 1e6:.1f} MB (float16), process RSS +{rss1 - rss0:.0f}"
        f" MB on load (after `import torch`, RSS {rss0:.0f} MB)"
    )


# -- simulation -------------------------------------------------------------------------------


class FoldRouter(Predictor):
    """Each program is predicted by the model of the fold that held its conversation out."""

    name = "learned"

    def __init__(self, models: Sequence[LengthModel], fold_of: dict[str, int]) -> None:
        self.history = HistoryPredictor()
        self.fold_of = fold_of
        self.servers = [LearnedPredictor(m, fallback=self.history) for m in models]

    def predict(self, query: PredictionQuery) -> Prediction:
        return self.servers[self.fold_of[query.program_id]].predict(query)

    def observe(self, query: PredictionQuery, outcome: Outcome) -> None:
        self.history.observe(query, outcome)


class OracleLength(HistoryPredictor):
    """True output length, history for the tool: the ceiling of any output-length predictor."""

    name = "oracle-length"

    def predict(self, query: PredictionQuery) -> Prediction:
        pred = super().predict(query)
        assert query.truth is not None
        return Prediction(
            output_tokens=float(query.truth.output_tokens),
            tool=pred.tool,
            tool_duration=pred.tool_duration,
            returned_tokens=pred.returned_tokens,
        )


def simulate(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    trace = load_trace(TRACE)
    records = trace_records(TRACE)
    static = _static(args.model)
    fold_of_group = fold_groups(records, folds=args.folds, seed=args.seed)
    models = [
        fit(train, static, TrainConfig(seed=args.seed))
        for train, _ in _folds(records, args.folds, args.seed)
    ]
    fold_of = {
        p.program_id: fold_of_group[f"{trace.name}:{conversation_group(p.program_id)}"]
        for p in trace.programs
    }
    texts = trace_texts(TRACE)
    makers = {
        "oracle": OraclePredictor,
        "oracle-length": OracleLength,
        "learned": lambda: TraceTextPredictor(FoldRouter(models, fold_of), texts),
        "history": HistoryPredictor,
    }
    points = [("a100-gptj6b", None, 6.0), ("a100-gptj6b, gpu_kv_gb=26", {"gpu_kv_gb": 26}, 16.0)]
    print(
        "\n| preset | qps | policy | predictor | E2E mean s | E2E P99 s | engine mean s |"
        " TTFT mean s |\n|---|---:|---|---|---:|---:|---:|---:|"
    )
    for label, overrides, qps in points:
        preset = load_preset("a100-gptj6b", overrides=overrides)
        arrivals = poisson_workload(trace.programs, qps=qps, seed=args.seed)
        runs: list[tuple[str, str, Predictor]] = [
            ("lamps", name, make()) for name, make in makers.items()
        ]
        runs += [(ref, "history", HistoryPredictor()) for ref in ("vllm", "infercept")]
        keys: dict[str, tuple[float, float, float]] = {}
        for policy_name, pred_name, predictor in runs:
            policy = (
                LampsPolicy(predictor=predictor, preset=preset)
                if policy_name == "lamps"
                else make_policy(policy_name, predictor=predictor, preset=preset)
            )
            s = (
                Simulator(preset=preset, policy=policy, arrivals=arrivals)
                .run(RunLabels(policy=policy_name, predictor=pred_name, trace=TRACE, qps=qps))
                .summary
            )
            if policy_name == "lamps":
                keys[pred_name] = (s.e2e.mean, s.e2e.p99, s.engine_time.mean)
            print(
                f"| {label} | {qps:g} | {policy_name} | {pred_name} | {s.e2e.mean:.2f} |"
                f" {s.e2e.p99:.2f} | {s.engine_time.mean:.2f} | {s.ttft.mean:.3f} |"
            )
        for i, what in enumerate(("E2E mean", "E2E P99", "engine mean")):
            hist, ceiling, learned = (keys[n][i] for n in ("history", "oracle-length", "learned"))
            gain = hist - ceiling
            # The share kept is only meaningful where knowing the true length helps at all.
            kept = f"{(hist - learned) / gain:.0%}" if gain >= 0.01 * hist else "n/a"
            print(
                f"  {label} qps {qps:g} {what}: oracle-length gain over history "
                f"{gain:+.2f} s ({gain / hist:+.1%}); learned gain {hist - learned:+.2f} s; "
                f"share kept {kept}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("accuracy", "latency", "sim"))
    parser.add_argument("--model", type=Path, help="store root (default ~/.lamps-agent)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=1024, help="latency: prompts timed")
    parser.add_argument(
        "--contextual", action="store_true", help="also the full MiniLM transformer (slow)"
    )
    args = parser.parse_args()
    {"accuracy": accuracy, "latency": latency, "sim": simulate}[args.what](args)


if __name__ == "__main__":
    main()
