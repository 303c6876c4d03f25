"""``lamps-agent db upgrade`` and ``lamps-agent tools list | stats | export``.

Only the standard library is imported at module level, so ``lamps-agent --help`` stays fast;
SQLAlchemy, Alembic and rich are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

STATS_FIELDS = (
    "tool",
    "api_type",
    "duration_hint",
    "count",
    "error_count",
    "mean",
    "std",
    "min",
    "p50",
    "p90",
    "p99",
    "max",
    "ewma",
    "estimate_mean",
    "confidence",
)


def _add_registry_option(parser: argparse.ArgumentParser) -> None:
    """``--registry URL`` (the name ``lamps-agent examples`` uses), with ``--url`` kept as a
    hidden alias for scripts written before the rename."""
    parser.add_argument(
        "--registry",
        default=None,
        metavar="URL|FILE",
        help="registry database: a URL (sqlite:///file.db, postgresql://...) or a SQLite file "
        "(default: $LAMPS_REGISTRY_URL or ~/.lamps-agent/registry.db)",
    )
    parser.add_argument("--url", dest="registry", default=None, help=argparse.SUPPRESS)


def _masking(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``handler`` whose errors never show a secret of the registry URL: the message that
    ``lamps-agent`` prints is redacted (the password, however the URL spells it)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from tool_registry.urls import ENV_URL, redact

        try:
            return handler(args)
        except (ValueError, KeyError, OSError) as exc:
            message = str(exc)
            for url in (args.registry, os.environ.get(ENV_URL)):
                if url:
                    message = redact(message, url)
            if message == str(exc):
                raise
            raise ValueError(message) from None

    return run


def register_commands(sub: Any) -> None:
    """Add the ``db`` and ``tools`` sub-commands to the ``lamps-agent`` parser."""

    db = sub.add_parser("db", help="manage the tool registry database")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = db_sub.add_parser("upgrade", help="create or migrate the schema to the newest one")
    _add_registry_option(upgrade)
    upgrade.set_defaults(handler=_masking(_db_upgrade))

    tools = sub.add_parser("tools", help="inspect registered tools and their call statistics")
    tools_sub = tools.add_subparsers(dest="tools_command", metavar="ACTION", required=True)
    listing = tools_sub.add_parser("list", help="registered tools with their hints")
    _add_registry_option(listing)
    listing.set_defaults(handler=_masking(_tools_list))
    stats = tools_sub.add_parser("stats", help="per-tool duration statistics and estimates")
    stats.add_argument("--tool", default=None, help="only this tool")
    _add_registry_option(stats)
    stats.set_defaults(handler=_masking(_tools_stats))
    export = tools_sub.add_parser(
        "export", help="export statistics (or every call, or every model turn) as CSV/JSON/JSONL"
    )
    export.add_argument("--format", choices=("csv", "json", "jsonl"), required=True)
    export.add_argument("--output", default=None, help="file to write (default: stdout)")
    what = export.add_mutually_exclusive_group()
    what.add_argument("--calls", action="store_true", help="every call, not per-tool stats")
    what.add_argument(
        "--turns",
        action="store_true",
        help="every model turn (JSONL: the turn records `predictor train --jsonl` reads)",
    )
    what.add_argument(
        "--trace",
        action="store_true",
        help="your agents' sessions as a trace file for `bench --trace` (--format json; "
        "docs/traces.md, 'From the tool registry')",
    )
    export.add_argument("--tool", default=None, help="only this tool")
    _add_registry_option(export)
    export.set_defaults(handler=_masking(_tools_export))


@contextmanager
def _registry(url: str | None) -> Iterator[Any]:
    from tool_registry.registry import ToolRegistry

    reg = ToolRegistry(url)
    try:
        yield reg
    finally:
        reg.close()


def _db_upgrade(args: argparse.Namespace) -> int:
    import asyncio

    from tool_registry.schema import HEAD_REVISION, ensure_schema
    from tool_registry.store import Store
    from tool_registry.urls import resolve_url

    store = Store(resolve_url(args.registry))

    async def upgrade() -> bool:
        try:
            await store.open()
            return await ensure_schema(store.engine)
        finally:
            await store.dispose()

    asyncio.run(upgrade())
    print(f"tool registry schema at revision {HEAD_REVISION}: {store.masked_url}")
    return 0


def _console() -> Any:
    from rich.console import Console

    # Piped output would otherwise be cut to 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=200)


def _text(value: str) -> Any:
    """A table cell showing ``value`` literally: names come from users and models, and rich
    would read ``[/x]`` as markup (a crash) and ``[link=...]`` as a terminal link."""
    from rich.text import Text

    return Text(value)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _empty(registry: str | None, what: str) -> str:
    """One line for an empty registry, naming it: an empty table would say nothing of where."""
    from tool_registry.urls import location

    return f"{what} yet in the tool registry at {location(registry)} (`lamps-agent examples` records some)"


def _tools_list(args: argparse.Namespace) -> int:
    import datetime as dt

    from rich.table import Table

    with _registry(args.registry) as reg:
        infos = reg.list()
    if not infos:
        print(_empty(args.registry, "no tools registered"))
        return 0
    table = Table(title=f"{len(infos)} registered tools")
    for column in ("tool", "api type", "hint (s)", "registered", "description"):
        table.add_column(column, justify="right" if column == "hint (s)" else "left")
    for info in infos:
        when = dt.datetime.fromtimestamp(info.registered_at, dt.UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(
            _text(info.name),
            _text(info.api_type or "-"),
            _fmt(info.duration_hint),
            when,
            _text(info.description or ""),
        )
    _console().print(table)
    return 0


def _stats_rows(reg: Any, tool: str | None) -> list[dict[str, Any]]:
    hints = {info.name: info for info in reg.list()}
    rows = []
    for stat in reg.stats(tool):
        info = hints.get(stat.tool)
        estimate = reg.estimate(stat.tool)
        rows.append(
            {
                "tool": stat.tool,
                "api_type": info.api_type if info else None,
                "duration_hint": info.duration_hint if info else None,
                "count": stat.count,
                "error_count": stat.error_count,
                "mean": stat.mean,
                "std": stat.std,
                "min": stat.min,
                "p50": stat.p50,
                "p90": stat.p90,
                "p99": stat.p99,
                "max": stat.max,
                "ewma": stat.ewma,
                "estimate_mean": estimate.mean,
                "confidence": estimate.confidence,
            }
        )
    return rows


def _tools_stats(args: argparse.Namespace) -> int:
    from rich.table import Table

    with _registry(args.registry) as reg:
        rows = _stats_rows(reg, args.tool)
    if args.tool is not None and not rows:
        raise ValueError(f"no calls recorded for tool {args.tool!r}")
    if not rows:
        print(_empty(args.registry, "no tool calls recorded"))
        return 0
    table = Table(title="tool call durations (seconds)")
    headers = (
        "tool",
        "calls",
        "errors",
        "mean",
        "p50",
        "p90",
        "p99",
        "max",
        "ewma",
        "hint",
        "estimate",
        "conf.",
    )
    for header in headers:
        table.add_column(header, justify="left" if header == "tool" else "right")
    for row in rows:
        table.add_row(
            _text(row["tool"]),
            f"{row['count']:,}",
            f"{row['error_count']:,}",
            *(
                _fmt(row[key])
                for key in (
                    "mean",
                    "p50",
                    "p90",
                    "p99",
                    "max",
                    "ewma",
                    "duration_hint",
                    "estimate_mean",
                )
            ),
            f"{row['confidence']:.2f}",
        )
    _console().print(table)
    return 0


def _tools_export(args: argparse.Namespace) -> int:
    from tool_registry.types import CALL_FIELDS, TURN_FIELDS

    if (args.turns or args.trace) and args.tool is not None:
        raise ValueError("--tool selects calls; model turns are exported whole")
    if args.trace:
        if args.format != "json":
            raise ValueError("--trace writes a JSON trace file: use --format json")
        return _export_trace(args)
    output: IO[str] = sys.stdout if args.output is None else open(args.output, "w", newline="")  # noqa: SIM115
    try:
        with _registry(args.registry) as reg:
            if args.calls:
                _write(output, args.format, CALL_FIELDS, _iter_calls(reg, args.tool))
            elif args.turns:
                fields = (*TURN_FIELDS, "conversation")
                _write(output, args.format, fields, _iter_turns(reg, TURN_FIELDS))
            else:
                _write(output, args.format, STATS_FIELDS, iter(_stats_rows(reg, args.tool)))
    finally:
        if output is not sys.stdout:
            output.close()
    return 0


def _export_trace(args: argparse.Namespace) -> int:
    from lamps_agent.workloads.from_registry import trace_from_registry

    with _registry(args.registry) as reg:
        trace = trace_from_registry(reg.iter_turns(), reg.iter_calls(None))
    text = json.dumps(trace.programs, indent=1) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    left = ", ".join(f"{n} {why}" for why, n in sorted(trace.skipped.items())) or "none"
    filled = (
        f"; {trace.median_filled} tool calls timed by their tool's median"
        if trace.median_filled
        else ""
    )
    where = f" to {args.output}" if args.output else ""
    print(f"{len(trace.programs)} sessions as programs{where}; left out: {left}{filled}",
          file=sys.stderr)  # fmt: skip
    if not trace.programs:
        print("no session could be made a program: the middleware records prompt sizes and "
              "sessions (docs/tool-registry.md)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _iter_calls(reg: Any, tool: str | None) -> Iterator[dict[str, Any]]:
    for record in reg.iter_calls(tool):
        yield {
            "id": str(record.id),
            "tool": record.tool,
            "session_id": record.session_id,
            "started_at": record.started_at,
            "duration": record.duration,
            "status": record.status.value,
            "error_type": record.error_type,
            "input_size": record.input_size,
            "output_size": record.output_size,
        }


def _iter_turns(reg: Any, columns: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    for record in reg.iter_turns():
        row = {name: getattr(record, name) for name in columns}
        # the group `predictor train --jsonl` keeps on one side of a split
        row["conversation"] = record.session_id or f"turn:{record.id}"
        yield row


def _write(
    output: IO[str], fmt: str, fields: tuple[str, ...], rows: Iterator[dict[str, Any]]
) -> None:
    if fmt == "csv":
        writer = csv.DictWriter(output, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
        return
    if fmt == "jsonl":
        for row in rows:
            output.write(json.dumps(row) + "\n")
        return
    output.write("[")
    for index, row in enumerate(rows):
        output.write(("," if index else "") + "\n  " + json.dumps(row))
    output.write("\n]\n")
