"""Named exceptions of the core, so callers can tell bad input from bugs."""

from __future__ import annotations


class LampsError(Exception):
    """Base class of every error the core raises on purpose."""


class ConfigError(LampsError, ValueError):
    """A preset, override or policy option that makes no sense."""


class UnknownNameError(LampsError, KeyError):
    """A name (policy, predictor, preset) that no registry knows; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TraceError(LampsError, ValueError):
    """A malformed workload trace; the message names the file and the entry."""


class SimulationError(LampsError, RuntimeError):
    """The simulator reached a state it cannot leave (a bug or an impossible configuration)."""
