"""What the example agents share: the command line, the chat model (a live OpenAI-compatible
endpoint, or an offline scripted one), the middleware, the tool registry and the statistics
printed at the end.

Offline (no ``--base-url``) each app drives the packaged
:class:`adapters.langchain.testing.ScriptedChatModel`, whose replies a small per-app script
computes from the conversation so far, so the real tools run on real inputs and the whole app
takes seconds.  Against a server every reply is capped at ``--max-tokens`` and every task at
``--max-turns`` model calls, so a model that never stops (a random-weight test model) still
finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

try:
    import lamps_agent  # noqa: F401
except ModuleNotFoundError:  # run from a source checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain.agents.middleware import AgentMiddleware, ModelCallLimitMiddleware
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage

from adapters.langchain import LampsHints, LampsMiddleware
from adapters.langchain.testing import ScriptedChatModel
from tool_registry import ToolRegistry
from tool_registry.errors import RegistryError
from tool_registry.urls import is_sqlite, location, resolve_url, sqlite_path

DATA = Path(__file__).resolve().parent / "data"
Script = Callable[[list[BaseMessage]], AIMessage]


def parse_args(
    description: str,
    argv: Sequence[str] | None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--base-url",
        help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 "
        "(default: offline, a scripted chat model)",
    )
    parser.add_argument(
        "--model", help="model name at --base-url (default: the one the server serves)"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=256,
        help="cap on each reply's generated tokens at --base-url (default: %(default)s)",
    )
    parser.add_argument(
        "--max-turns",
        type=int,
        default=8,
        help="model calls per task before the agent stops (default: %(default)s)",
    )
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    parser.add_argument(
        "--registry",
        help="tool registry: a URL or a SQLite file "
        "(default: $LAMPS_REGISTRY_URL or ~/.lamps-agent/registry.db, what `tools stats` reads)",
    )
    parser.add_argument(
        "--create-registry",
        action="store_true",
        help="create the folder of a --registry SQLite file if it does not exist",
    )
    parser.add_argument("--limit", type=int, default=None, help="run only the first N tasks")
    parser.add_argument(
        "--no-priority",
        action="store_true",
        help="do not send the body 'priority' (for a vLLM without --scheduling-policy priority)",
    )
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    for flag in ("limit", "max_tokens", "max_turns"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    return args


def fail(message: str) -> NoReturn:
    """Stop the app with one line on stderr (no traceback) and exit status 2."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_endpoint(base_url: str, timeout: float = 5.0) -> None:
    """Fail in one line, before any agent runs, when nothing answers at ``base_url``; any HTTP
    answer (even an error status) means a server is there."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/models", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        fail(f"--base-url {base_url}: cannot connect ({reason}); is the server running?")


def chat_model(args: argparse.Namespace, script: Script) -> BaseChatModel:
    """The live model at ``--base-url``, else the offline scripted one."""
    if not args.base_url:
        return ScriptedChatModel(script=script)
    from langchain_openai import ChatOpenAI

    check_endpoint(args.base_url)
    return ChatOpenAI(
        base_url=args.base_url,
        model=args.model or served_model(args.base_url, args.api_key),
        api_key=args.api_key,
        temperature=0,
        max_tokens=args.max_tokens,
    )


def served_model(base_url: str, api_key: str) -> str:
    """The first model the server at ``base_url`` lists (``GET /models``), for a run without
    ``--model``; stops the app with one line if it cannot be listed."""
    url = f"{base_url.rstrip('/')}/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            models = json.loads(resp.read())["data"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
        fail(f"--base-url {base_url}: cannot list its models ({getattr(exc, 'reason', exc)})")
    if not models:
        fail(f"--base-url {base_url}: the server lists no model; pass --model")
    return str(models[0]["id"])


def _check_sqlite_folder(url: str, *, create: bool) -> None:
    """A SQLite registry in a folder that does not exist is a typo more often than a wish: refuse
    it unless ``--create-registry`` asks for the folder."""
    resolved = resolve_url(url)
    path = sqlite_path(resolved) if is_sqlite(resolved) else None
    if path is None or create:
        return
    folder = path.expanduser().parent
    if not folder.is_dir():
        fail(
            f"--registry {url}: folder {folder} does not exist "
            "(create it, or pass --create-registry)"
        )


def open_registry(args: argparse.Namespace) -> ToolRegistry:
    """The registry at ``--registry``, else the default one (``$LAMPS_REGISTRY_URL`` or
    ``~/.lamps-agent/registry.db``, the one ``lamps-agent tools stats`` reads), so the calls stay
    to be looked at; a bad or unreachable one stops the app with one line."""
    try:
        if args.registry:
            _check_sqlite_folder(args.registry, create=args.create_registry)
        registry = ToolRegistry(args.registry)  # connects: an unreachable database fails here
    except (ValueError, RegistryError) as exc:
        fail(f"--registry: {exc}" if args.registry else str(exc))
    print(f"recording tool calls in the tool registry at {location(registry.url)}")
    return registry


def middleware(
    args: argparse.Namespace, registry: ToolRegistry, agent: str
) -> list[AgentMiddleware[Any, Any, Any]]:
    """The agent's middleware: a cap of ``--max-turns`` model calls per task, then the hints
    (innermost, as docs/langchain.md advises)."""
    return [
        ModelCallLimitMiddleware(run_limit=args.max_turns, exit_behavior="end"),
        LampsMiddleware(registry=registry, agent=agent, send_priority=not args.no_priority),
    ]


def print_hints(model: BaseChatModel) -> None:
    """Show the hints of the last model call (offline only: the scripted model keeps them)."""
    body = getattr(model, "last_body", None)
    if body:
        hints = LampsHints.from_body(body)
        print(
            f"last model call's hints: session={hints.session_id} step={hints.step} "
            f"output_tokens={hints.output_tokens} tool={hints.tool} "
            f"tool_duration={hints.tool_duration:.3f}s kv_strategy={hints.kv_strategy.value} "
            f"priority={hints.priority}"
        )


def print_stats(registry: ToolRegistry) -> None:
    """The per-tool statistics the registry has recorded."""
    registry.flush()
    print("tool statistics (from the tool registry):")
    print(
        f"  {'tool':<18}{'calls':>6}{'errors':>7}{'mean s':>10}{'p50 s':>10}{'p90 s':>10}{'max s':>10}"
    )
    for s in sorted(registry.stats(), key=lambda s: s.tool):
        print(
            f"  {s.tool:<18}{s.count:>6}{s.error_count:>7}"
            f"{s.mean:>10.4f}{s.p50:>10.4f}{s.p90:>10.4f}{s.max:>10.4f}"
        )
    where = location(registry.url)
    command = "lamps-agent tools stats"
    if registry.url != resolve_url(None):
        command += f" --registry {where if is_sqlite(registry.url) else 'URL'}"
    print(f"(every call recorded in {where}, this run's and earlier ones; `{command}` shows them)")
