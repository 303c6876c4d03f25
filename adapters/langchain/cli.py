"""``lamps-agent examples``: run the example agent apps (offline unless given ``--base-url``).

Only the standard library is imported here; each app runs as its own process, so a failing app
does not hide the others' output.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

EXAMPLES = {
    "math": "math_agent.py",
    "qa": "qa_agent.py",
    "slow": "slow_tools_agent.py",
}


def examples_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "examples"


def register_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "examples",
        help="run the example LangChain agent apps (offline by default)",
        description="Run the example agents: a math agent, a multi-hop QA agent and an agent with "
        "slow tools.  Without --base-url they use a scripted chat model and finish in seconds.",
    )
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint (default: offline)")
    parser.add_argument("--model", help="model name at --base-url")
    parser.add_argument("--api-key", help="API key for --base-url (default: $OPENAI_API_KEY)")
    parser.add_argument(
        "--registry",
        metavar="URL|FILE",
        help="tool registry: a URL or a SQLite file (default: $LAMPS_REGISTRY_URL or "
        "~/.lamps-agent/registry.db, the one `lamps-agent tools stats` reads)",
    )
    parser.add_argument("--limit", type=int, help="tasks per app")
    parser.add_argument(
        "--max-tokens", type=int, help="cap on each reply's tokens at --base-url (apps: 256)"
    )
    parser.add_argument("--max-turns", type=int, help="model calls per task (apps: 8)")
    parser.add_argument("--no-priority", action="store_true", help="omit the body 'priority'")
    parser.add_argument(
        "--create-registry",
        action="store_true",
        help="create the folder of a SQLite --registry that does not exist yet",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(EXAMPLES),
        help="run only this app (repeatable; default: all)",
    )
    parser.set_defaults(handler=run_examples)


def run_examples(args: argparse.Namespace) -> int:
    folder = examples_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"no examples folder at {folder} (run from a source checkout)")
    forwarded: list[str] = []
    for flag in ("base_url", "model", "api_key", "registry", "limit", "max_tokens", "max_turns"):
        value = getattr(args, flag)
        if value is not None:
            forwarded += [f"--{flag.replace('_', '-')}", str(value)]
    if args.no_priority:
        forwarded.append("--no-priority")
    if args.create_registry:
        forwarded.append("--create-registry")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder.parent), env.get("PYTHONPATH")]))
    failed = []
    for name in args.only or list(EXAMPLES):
        print(f"=== {name}: examples/{EXAMPLES[name]} ===", flush=True)
        done = subprocess.run([sys.executable, str(folder / EXAMPLES[name]), *forwarded], env=env)
        if done.returncode != 0:
            failed.append(name)
        print(flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(_where_recorded(args.registry))
    return 0


def _where_recorded(registry: str | None) -> str:
    from tool_registry.urls import is_sqlite, location, resolve_url

    where = location(registry)
    option = ""
    if registry is not None:  # a SQLite file is named as is; a URL may hold a password
        option = f" --registry {where if is_sqlite(resolve_url(registry)) else 'URL'}"
    return f"the tool calls are recorded in {where}: `lamps-agent tools stats{option}` shows them"
