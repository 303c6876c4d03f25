"""The overflow file: records that do not fit in the bounded buffer, or that could not be written
before a shutdown, go to a local JSON-lines file and are replayed into the database later.

Each registry appends to its own file ``<url-key>.<pid>.<token>.jsonl`` in the spill directory.
Records carry their UUID, so replaying a file twice (say, after a crash mid-replay) adds nothing
twice.  A registry that starts claims the files of its database left by processes that are gone
(or by closed registries of its own process) by renaming them, which is atomic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from tool_registry.types import Row, TurnRow

log = logging.getLogger(__name__)
DEFAULT_SPILL_DIR = Path("~/.lamps-agent/spill")
_ACTIVE_TOKENS: set[str] = set()  # spill files of live registries in this process


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def encode(row: Row) -> str:
    """One line: a call as a JSON array in ``calls`` column order (id first), a model turn as
    ``{"turn": [...]}`` in ``turns`` column order."""
    if type(row) is TurnRow:
        return json.dumps({"turn": row}, separators=(",", ":"))
    return json.dumps(row, separators=(",", ":"))


def decode(line: str) -> Row:
    values = json.loads(line)
    if isinstance(values, dict):
        fields = values["turn"]
        if not isinstance(fields, list) or len(fields) != len(TurnRow._fields):
            raise ValueError("not a spilled turn")
        return TurnRow(*fields)
    if not isinstance(values, list) or len(values) != 9 or not isinstance(values[0], str):
        raise ValueError("not a spilled call")
    row: Row = tuple(values)
    return row


class SpillFile:
    """This registry's overflow file; not thread-safe (the registry holds its buffer lock)."""

    def __init__(self, directory: Path, url: str) -> None:
        self.directory = directory.expanduser()
        self._key = url_key(url)
        self._token = secrets.token_hex(4)
        _ACTIVE_TOKENS.add(self._token)
        self.path = self.directory / f"{self._key}.{os.getpid()}.{self._token}.jsonl"
        self._file: IO[str] | None = None
        self.num_lines = 0  # lines in the current file, not yet handed to the replayer

    def write(self, rows: Iterable[Row]) -> int:
        """Append calls and turns (with their ids); returns how many were written."""
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        count = 0
        for row in rows:
            self._file.write(encode(row) + "\n")
            count += 1
        self._file.flush()
        self.num_lines += count
        return count

    def take(self) -> tuple[Path, int] | None:
        """Close the current file and hand it over for replay (renamed: new lines start afresh)."""
        if self._file is None:
            return None
        self._file.close()
        self._file = None
        taken = self.path.with_suffix(f".replay-{secrets.token_hex(4)}")
        self.path.rename(taken)
        count, self.num_lines = self.num_lines, 0
        return taken, count

    def claim_orphans(self) -> list[tuple[Path, int]]:
        """Files for the same database whose writer is gone, renamed to be ours to replay."""
        if not self.directory.is_dir():
            return []
        claimed: list[tuple[Path, int]] = []
        for path in sorted(self.directory.glob(f"{self._key}.*")):
            parts = path.name.split(".")
            if len(parts) < 4 or path == self.path:
                continue
            pid, token = int(parts[1]) if parts[1].isdigit() else -1, parts[2]
            owned_here = pid == os.getpid()
            if (owned_here and token in _ACTIVE_TOKENS) or (not owned_here and _pid_alive(pid)):
                continue
            target = self.path.with_suffix(f".replay-{secrets.token_hex(4)}")
            try:
                path.rename(target)
            except FileNotFoundError:
                continue  # another registry claimed it first
            with target.open(encoding="utf-8") as file:
                claimed.append((target, sum(1 for line in file if line.strip())))
        return claimed

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        _ACTIVE_TOKENS.discard(self._token)


def read(path: Path) -> list[Row]:
    """The calls and turns of a spill file; a torn last line (a crash mid-write) is skipped."""
    records: list[Row] = []
    with path.open(encoding="utf-8") as file:
        for line in file:
            if not line.strip():
                continue
            try:
                records.append(decode(line))
            except (ValueError, KeyError):
                log.warning("tool registry: skipping a torn line in spill file %s", path)
    return records
