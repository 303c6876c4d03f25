"""The overflow file: records that do not fit in the bounded buffer, or that could not be written
before a shutdown, go to a local JSON-lines file and are replayed into the database later.

Each registry appends to its own file ``<url-key>.<pid>.<token>.jsonl`` in the spill directory,
holding an exclusive ``flock`` on it for as long as it owns it (writing, then replaying).  A
registry that starts claims the files of its database that nobody holds locked: a lock, unlike a
PID, means the same across PID namespaces (containers sharing the directory) and is released by
the kernel when its owner dies, SIGKILL included.  Records carry their UUID and the insert is
idempotent, so replaying a file twice (a crash mid-replay) adds nothing twice.

``url-key`` hashes the URL without its password, so a password rotation keeps the files; files
named after the old key (the whole URL) are still claimed.  Files are created 0600 in a 0700
directory: records may hold session ids and prompt text.

Lines that cannot be read back (invalid UTF-8, a torn last line, a field out of range) go to the
quarantine file ``<url-key>.quarantine.jsonl``, verbatim; rows the database itself rejects (see
:mod:`tool_registry.writer`) go to ``<url-key>.dead-letter.jsonl``.  Both are counted and logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tool_registry.types import CallStatus, Row, TurnRow
from tool_registry.urls import without_password
from tool_registry.validation import (
    MAX_STEP,
    check_count,
    check_duration,
    check_label,
    check_name,
    check_size,
    check_timestamp,
    clip_prompt_text,
)

log = logging.getLogger(__name__)
DEFAULT_SPILL_DIR = Path("~/.lamps-agent/spill")
FILE_MODE = 0o600
DIR_MODE = 0o700
QUARANTINE_SUFFIX = "quarantine.jsonl"
DEAD_LETTER_SUFFIX = "dead-letter.jsonl"
_ID = re.compile(r"[0-9a-f]{32}")
_STATUSES = frozenset(status.value for status in CallStatus)


def url_key(url: str) -> str:
    """The file-name key of a database: its URL without the password, hashed."""
    return hashlib.sha256(without_password(url).encode()).hexdigest()[:16]


def _legacy_url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def encode(row: Row) -> str:
    """One line: a call as a JSON array in ``calls`` column order (id first), a model turn as
    ``{"turn": [...]}`` in ``turns`` column order.  ASCII only (``ensure_ascii``)."""
    if type(row) is TurnRow:
        return json.dumps({"turn": row}, separators=(",", ":"))
    return json.dumps(row, separators=(",", ":"))


def _check_id(value: object) -> str:
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise ValueError(f"a record id must be 32 lowercase hex digits, got {value!r:.50}")
    return value


def _decode_call(values: list[object]) -> Row:
    row_id, tool, session_id, started_at, duration, status, error_type, in_size, out_size = values
    if status not in _STATUSES:
        raise ValueError(f"unknown status {status!r:.30}")
    return (
        _check_id(row_id),
        check_name(tool),
        check_label(session_id, "session_id"),
        check_timestamp(started_at),
        check_duration(duration),
        str(status),
        check_label(error_type, "error_type"),
        check_size(in_size, "input_size"),
        check_size(out_size, "output_size"),
    )


def _decode_turn(fields: list[object]) -> TurnRow:
    row_id, session_id, agent, step, tool, prompt_tokens, output_tokens, text, created = fields
    return TurnRow(
        id=_check_id(row_id),
        session_id=check_label(session_id, "session_id"),
        agent=check_name(agent, "agent"),
        step=check_count(step, "step", maximum=MAX_STEP),
        tool=None if tool is None else check_name(tool),
        prompt_tokens=None if prompt_tokens is None else check_count(prompt_tokens, "prompt"),
        output_tokens=check_count(output_tokens, "output_tokens"),
        prompt_text=clip_prompt_text(text),
        created_at=check_timestamp(created),
    )


def decode(line: str) -> Row:
    """The row of one spill line, every field checked as ``record()`` checks it (text sanitised);
    ``ValueError`` for a line that is not a valid record."""
    values = json.loads(line)
    if isinstance(values, dict):
        fields = values.get("turn")
        if not isinstance(fields, list) or len(fields) != len(TurnRow._fields):
            raise ValueError("not a spilled turn")
        return _decode_turn(fields)
    if not isinstance(values, list) or len(values) != 9:
        raise ValueError("not a spilled call")
    return _decode_call(values)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _lock(fd: int, *, wait: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def make_private_dir(directory: Path) -> None:
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


@dataclass(slots=True)
class Claim:
    """A spill file this registry owns for replay: its path, the locked descriptor, its lines."""

    path: Path
    fd: int
    count: int

    def release(self, *, done: bool) -> None:
        """Unlink the file when ``done`` (all of it is in the database), then drop the lock."""
        if done:
            self.path.unlink(missing_ok=True)  # before the unlock: nobody can claim it in between
        with contextlib.suppress(OSError):
            os.close(self.fd)


class SpillFile:
    """This registry's overflow file; not thread-safe (the registry holds its buffer lock)."""

    def __init__(self, directory: Path, url: str) -> None:
        self.directory = directory.expanduser()
        self.key = url_key(url)
        self._keys = list(dict.fromkeys((self.key, _legacy_url_key(url))))
        self._token = secrets.token_hex(4)
        self.path = self.directory / f"{self.key}.{os.getpid()}.{self._token}.jsonl"
        self._fd: int | None = None
        self.num_lines = 0  # lines in the current file, not yet handed to the replayer

    def _open(self) -> int:
        make_private_dir(self.directory)
        # Created and locked under a name no claimer looks at, then renamed into view: a claimer
        # can never lock (and take) a file its writer has not locked yet.
        hidden = self.directory / f".{self.path.name}.new"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        try:
            _lock(fd, wait=True)
            os.rename(hidden, self.path)
        except OSError:
            os.close(fd)
            hidden.unlink(missing_ok=True)
            raise
        return fd

    def write(self, rows: Iterable[Row]) -> int:
        """Append calls and turns (with their ids); returns how many were written.

        All or nothing: on an ``OSError`` (a full or unwritable disk) the file is cut back to
        where it was, so no torn line is left, and the error is raised."""
        lines = [encode(row) for row in rows]
        if not lines:
            return 0
        data = ("\n".join(lines) + "\n").encode("ascii")
        if self._fd is None:
            self._fd = self._open()
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            _write_all(self._fd, data)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise
        self.num_lines += len(lines)
        return len(lines)

    def take(self) -> Claim | None:
        """Hand the current file over for replay, still locked (renamed: new lines go to a new
        file)."""
        if self._fd is None:
            return None
        target = self.path.with_suffix(f".replay-{secrets.token_hex(4)}")
        os.rename(self.path, target)
        claim = Claim(target, self._fd, self.num_lines)
        self._fd, self.num_lines = None, 0
        return claim

    def claim_orphans(self) -> list[Claim]:
        """Files of the same database that nobody holds locked, renamed and locked to be ours."""
        if not self.directory.is_dir():
            return []
        claimed: list[Claim] = []
        for key in self._keys:
            for path in sorted(self.directory.glob(f"{key}.*")):
                parts = path.name.split(".")
                if len(parts) < 4 or not parts[1].isdigit() or path == self.path:
                    continue  # quarantine and dead-letter files, or not ours at all
                claim = self._claim(path)
                if claim is not None:
                    claimed.append(claim)
        return claimed

    def _claim(self, path: Path) -> Claim | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # another registry claimed it first
        try:
            if not _lock(fd, wait=False):
                os.close(fd)  # its writer (or replayer) is alive, wherever it runs
                return None
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise FileNotFoundError(path)  # replayed and deleted while we opened it
            target = self.path.with_suffix(f".replay-{secrets.token_hex(4)}")
            os.rename(path, target)
            return Claim(target, fd, count_lines(target))
        except OSError:
            os.close(fd)
            return None

    def close(self) -> None:
        """Release the current file (kept for the next registry when it holds records)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def count_lines(path: Path) -> int:
    """Non-blank lines of ``path``, read in blocks (never the whole file at once)."""
    count = 0
    with path.open("rb") as file:
        for line in file:
            count += bool(line.strip())
    return count


class SideFile:
    """An append-only private file of a registry's rejected records (quarantine, dead letters);
    counts what it keeps, logs the first one at WARNING and the rest at DEBUG."""

    def __init__(self, directory: Path, key: str, suffix: str, what: str) -> None:
        self.path = directory.expanduser() / f"{key}.{suffix}"
        self.what = what
        self.count = 0

    def add(self, line: bytes, reason: str) -> None:
        """Keep ``line`` (one record, without its newline); raises ``OSError`` if it cannot."""
        self.count += 1
        level = logging.WARNING if self.count == 1 else logging.DEBUG
        log.log(
            level,
            "tool registry: %s (%s); kept in %s (%d so far, later ones logged at DEBUG)",
            self.what,
            reason,
            self.path,
            self.count,
        )
        make_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        try:
            _write_all(fd, line.rstrip(b"\r\n") + b"\n")
        finally:
            os.close(fd)


def read_batches(path: Path, size: int, quarantine: SideFile) -> Iterator[list[Row]]:
    """The calls and turns of a spill file, ``size`` at a time: memory stays bounded by a batch
    whatever the file's size.  A line that is not a valid record goes to ``quarantine``."""
    batch: list[Row] = []
    with path.open("rb") as file:
        for raw in file:
            if not raw.strip():
                continue
            try:
                batch.append(decode(raw.decode("utf-8")))
            except (UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError) as exc:
                reason = f"unreadable line in spill file {path.name}: {str(exc)[:80]}"
                try:
                    quarantine.add(raw, reason)
                except OSError as error:
                    log.error("tool registry: cannot quarantine a spill line: %s", error)
                continue
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch
