"""Named exceptions of the tool registry."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of every error the tool registry raises on purpose."""


class RegistryUnavailableError(RegistryError, ConnectionError):
    """The registry database cannot be reached; the message names the URL, password masked."""


class RegistryClosedError(RegistryError, RuntimeError):
    """The registry was used after :meth:`ToolRegistry.close`."""


class SchemaTooNewError(RegistryUnavailableError):
    """The database was migrated by a newer lamps-agent than this one."""
