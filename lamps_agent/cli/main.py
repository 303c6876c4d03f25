"""Entry point of ``lamps-agent``: a sub-command per concern, each registered by its own module.

Command modules outside the core (the tool registry, the adapters) are found by name and add their
sub-commands only if they import; they must keep heavy imports inside their handlers, so
``lamps-agent --help`` stays fast and the core never depends on them.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import logging
import sys
from collections.abc import Sequence
from typing import Any

import lamps_agent

_OWN_PACKAGES = ("lamps_agent", "tool_registry", "adapters")
COMMAND_MODULES = (
    "lamps_agent.cli.demo",
    "lamps_agent.cli.bench",
    "lamps_agent.cli.fleet",
    "tool_registry.cli",
    "adapters.vllm.tools.cli",
    "adapters.langchain.cli",
    "lamps_agent.cli.predictor",
    "lamps_agent.cli.calibrate",
    "lamps_agent.cli.profile_ops",
)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to an option's help, unless the help already names its default or
    there is none to show (no value, a flag that is off, an empty list)."""

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        default = action.default
        return bool(action.option_strings) and not (
            "default" in (action.help or "").lower()
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or (isinstance(default, list) and not default)
        )

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and self._shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and self._shows_default(action) and "%(default)" not in action.help:
            return f"{action.help} (default: %(default)s)"
        return action.help


class Parser(argparse.ArgumentParser):
    """The parser of every ``lamps-agent`` command: help that shows each option's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def version() -> str:
    try:
        return importlib.metadata.version("lamps-agent")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return lamps_agent.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lamps-agent",
        description="Agent-aware LLM inference scheduling (LAMPS, INFERCEPT, WAIT).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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
