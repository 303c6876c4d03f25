"""Entry point of ``lamps-agent``: a sub-command per concern, each registered by its own module.

Command modules outside the core (the tool registry, the adapters) are found by name and add their
sub-commands only if they import; they must keep heavy imports inside their handlers, so
``lamps-agent --help`` stays fast and the core never depends on them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

_OWN_PACKAGES = ("lamps_agent", "tool_registry", "adapters")
COMMAND_MODULES = (
    "lamps_agent.cli.bench",
    "tool_registry.cli",
    "adapters.vllm.cli",
    "adapters.langchain.cli",
    "lamps_agent.cli.predictor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamps-agent",
        description="Agent-aware LLM inference scheduling (LAMPS, INFERCEPT, WAIT).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if name.startswith(missing) or missing.split(".")[0] not in _OWN_PACKAGES:
                # That part of the product is not in this build, or its extra is not installed.
                logging.getLogger(__name__).debug("no %s commands: %s", name, exc)
                continue
            raise
        module.register_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, KeyError, OSError) as exc:
        # Bad input reaches the user as one clear line, not a traceback.
        if args.verbose:
            raise
        print(f"lamps-agent: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
