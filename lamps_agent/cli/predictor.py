"""``lamps-agent predictor train | eval``: the learned output-length predictor.

Examples::

    lamps-agent predictor train --trace multi-api --epochs 80 --seed 0
    lamps-agent predictor eval --trace multi-api
    lamps-agent predictor train --registry sqlite:///registry.db   # turns agents recorded

Training holds out whole conversations (``--test-fraction``, seeded), reports the held-out scores
against the history estimator and a prompt-length regression, and saves the model as the next
version under ``<out>/predictors/output-length/`` (default ``~/.lamps-agent``); running agents
reload it.  torch and friends are imported inside the handlers (the ``learned`` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ENCODERS = ("static", "contextual", "hashing", "none")


def register_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("predictor", help="train and evaluate the learned output-length predictor")
    actions = p.add_subparsers(dest="predictor_command", metavar="ACTION")
    p.set_defaults(handler=lambda _args: _usage(p))

    train = actions.add_parser("train", help="train on traces / turn records and save a version")
    _data_args(train)
    train.add_argument(
        "--out", type=Path, help="store root (default $LAMPS_PREDICTOR_DIR or ~/.lamps-agent)"
    )
    train.add_argument("--epochs", type=int, default=80)
    train.add_argument("--encoder", choices=ENCODERS, default="static", help="text encoder")
    train.add_argument("--objective", choices=("bins", "regression"), default="bins")
    train.add_argument(
        "--final", action="store_true", help="after scoring, refit on all records before saving"
    )
    train.set_defaults(handler=_train)

    ev = actions.add_parser("eval", help="score a saved model on the held-out conversations")
    _data_args(ev)
    ev.add_argument("--model", type=Path, help="store root the model was saved in")
    ev.add_argument("--version", help="version to score (default: the current one)")
    ev.set_defaults(handler=_eval)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace",
        action="append",
        help="INFERCEPT-format trace (file, or multi-api / single-api); repeatable",
    )
    p.add_argument("--jsonl", action="append", type=Path, help="turn-record JSONL file; repeatable")
    p.add_argument(
        "--registry",
        action="append",
        metavar="URL",
        help="tool registry whose recorded model turns to use (one group per session); repeatable",
    )
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--test-fraction", type=float, default=0.2, help="conversations held out")


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _records(args: argparse.Namespace) -> tuple[list[Any], list[str]]:
    from lamps_agent.predictors.learned.data import jsonl_records, trace_records

    traces = args.trace or ([] if args.jsonl or args.registry else ["multi-api"])
    records, sources = [], []
    for spec in traces:
        records += trace_records(spec)
        sources.append(f"trace:{spec}")
    for path in args.jsonl or []:
        records += jsonl_records(path)
        sources.append(f"jsonl:{path}")
    for url in args.registry or []:
        records += _registry_records(url)
        sources.append(f"registry:{_masked(url)}")
    if not records:
        raise ValueError("no training records")
    return records, sources


def _registry_records(url: str) -> list[Any]:
    try:
        from tool_registry.training import training_records
        from tool_registry.urls import is_sqlite, resolve_url, sqlite_path
    except ImportError as exc:  # the registry is a separate package of this distribution
        raise ValueError(f"--registry needs the tool registry ({exc})") from None
    resolved = resolve_url(url)
    path = sqlite_path(resolved) if is_sqlite(resolved) else None
    if path is not None and not path.expanduser().is_file():
        # Opening it would create an empty database (and its folder) and train on nothing.
        raise ValueError(f"--registry {url}: no registry database at {path}")
    return training_records(url)


def _masked(url: str) -> str:
    from tool_registry.urls import mask_password

    return mask_password(url)


def _need_extra() -> int | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        print(
            "lamps-agent: error: needs the 'learned' extra: pip install 'lamps-agent[learned]'",
            file=sys.stderr,
        )
        return 2
    return None


def _train(args: argparse.Namespace) -> int:
    if (code := _need_extra()) is not None:
        return code
    from lamps_agent.predictors.learned.data import data_hash, split_by_group
    from lamps_agent.predictors.learned.store import ModelStore
    from lamps_agent.predictors.learned.train import TrainConfig, compare_slices, fit

    if not 0 < args.test_fraction < 1 or args.epochs < 1:
        raise ValueError("--test-fraction must be in (0, 1) and --epochs >= 1")
    records, sources = _records(args)
    store = ModelStore(args.out)
    encoder = _encoder(args.encoder, store)
    config = TrainConfig(epochs=args.epochs, seed=args.seed, objective=args.objective)
    train, test = split_by_group(records, test_fraction=args.test_fraction, seed=args.seed)
    model = fit(train, encoder, config)
    scores = compare_slices(model, train, test)
    _print_scores(scores, title=f"held-out conversations (seed {args.seed})")
    if args.final:
        model = fit(records, encoder, config)
    version = store.save(
        model,
        extra={
            "train": {
                "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
                "sources": sources,
                "data_hash": data_hash(records),
                "num_records": len(records),
                "num_train": len(records) if args.final else len(train),
                "test_fraction": args.test_fraction,
                "final": bool(args.final),
            },
            "metrics": {s: {k: m.to_dict() for k, m in ms.items()} for s, ms in scores.items()},
        },
    )
    print(f"saved {store.dir / version} (current)")
    return 0


def _encoder(kind: str, store: Any) -> Any:
    from lamps_agent.predictors.learned.encoder import (
        CachedEncoder,
        ContextualEncoder,
        HashingEncoder,
        StaticEncoder,
    )

    if kind == "none":
        return None
    if kind == "hashing":
        return CachedEncoder(HashingEncoder(dim=256), max_entries=None)
    if kind == "contextual":
        return CachedEncoder(ContextualEncoder(), max_entries=None)
    return CachedEncoder(StaticEncoder(store.static_table()), max_entries=None)


def _eval(args: argparse.Namespace) -> int:
    if (code := _need_extra()) is not None:
        return code
    from lamps_agent.predictors.learned.data import split_by_group
    from lamps_agent.predictors.learned.store import ModelStore
    from lamps_agent.predictors.learned.train import compare_slices

    store = ModelStore(args.model)
    version, model = store.load(args.version)
    if store.manifest(version).get("train", {}).get("final"):
        print("note: this version was refit on all records; held-out scores are optimistic")
    records, _ = _records(args)
    train, test = split_by_group(records, test_fraction=args.test_fraction, seed=args.seed)
    _print_scores(compare_slices(model, train, test), title=f"{version}: held-out conversations")
    return 0


def _print_scores(scores: dict[str, dict[str, Any]], *, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("segments", "predictor", "n", "exact bin", "±1 bin", "MAE (tokens)"):
        table.add_column(col, justify="left" if col in ("segments", "predictor") else "right")
    for slice_name, by_predictor in scores.items():
        for name, m in by_predictor.items():
            table.add_row(
                slice_name,
                name,
                str(m.n),
                f"{m.exact_bin:.3f}",
                f"{m.within_one_bin:.3f}",
                f"{m.mae_tokens:.1f}",
            )
    probe = Console()
    (probe if probe.is_terminal else Console(width=120)).print(table)
