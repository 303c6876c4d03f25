"""Fixtures of the tool-registry tests: the same contract tests run on SQLite and PostgreSQL.

PostgreSQL tests read ``LAMPS_TEST_POSTGRES_URL`` (``.ci/postgres.sh`` prints it) and get a fresh
database each; without it, or without the ``postgres`` extra (asyncpg), they skip, unless
``LAMPS_REQUIRE_POSTGRES=1`` makes that a failure.  The SQLite tests need neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tool_registry import ToolRegistry

PG_ENV = "LAMPS_TEST_POSTGRES_URL"


def _postgres_base_url() -> str:
    url = os.environ.get(PG_ENV)
    if url:
        return url
    if os.environ.get("LAMPS_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"LAMPS_REQUIRE_POSTGRES=1 but {PG_ENV} is not set (run .ci/postgres.sh)")
    pytest.skip(f"{PG_ENV} not set")


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError as exc:
        if os.environ.get("LAMPS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"LAMPS_REQUIRE_POSTGRES=1 but the postgres extra is missing: {exc}")
        pytest.skip(f"the postgres extra (asyncpg) is not installed: {exc}")
    return asyncpg


async def _admin(url: str, sql: str) -> None:
    asyncpg = _asyncpg()
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    asyncpg = _asyncpg()
    base = _postgres_base_url()
    name = f"lamps_t_{secrets.token_hex(6)}"
    try:
        asyncio.run(_admin(base, f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("LAMPS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"cannot create a test database on {PG_ENV}: {exc}")
        pytest.skip(f"PostgreSQL at {PG_ENV} unusable: {exc}")
    head, _, _ = base.rpartition("/")
    yield f"{head}/{name}"
    asyncio.run(_drop_database(base, name))


async def _drop_database(url: str, name: str, *, attempts: int = 60) -> None:
    """Drop a test database, ending the test's leftover connections.

    ``WITH (FORCE)`` ends them, but PostgreSQL refuses it to a non-superuser while an autovacuum
    worker is in the database (a test that wrote 100k rows wakes one).  A plain ``DROP`` cancels
    such a worker itself, and is refused only while a connection is left: then try again."""
    asyncpg = _asyncpg()
    for _ in range(attempts):
        try:
            await _admin(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            return
        except asyncpg.InsufficientPrivilegeError:
            pass
        try:
            await _admin(url, f"DROP DATABASE IF EXISTS {name}")
            return
        except asyncpg.ObjectInUseError:
            await asyncio.sleep(0.5)
    raise RuntimeError(f"test database {name} still in use after {attempts} attempts to drop it")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty registry database, once per backend."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def spill_dir(tmp_path: Path) -> Path:
    return tmp_path / "spill"


@pytest.fixture
def make_registry(spill_dir: Path) -> Iterator[Callable[..., ToolRegistry]]:
    """Build registries that use the test's spill directory and are closed after the test."""
    made: list[ToolRegistry] = []

    def make(url: str, **kwargs: Any) -> ToolRegistry:
        kwargs.setdefault("spill_dir", spill_dir)
        reg = ToolRegistry(url, **kwargs)
        made.append(reg)
        return reg

    yield make
    for reg in made:
        reg.close(timeout=1.0)


class TcpProxy:
    """A TCP forwarder that a test can cut and restore, to lose the database mid-run for real, or
    freeze: connections stay open but nothing gets through (a network partition, no reset)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self.start()

    def freeze(self) -> None:
        """Hold every byte in both directions (new connections too) until :meth:`thaw`."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and break the open ones."""
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes accept(); close() alone would not on Linux
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                sock.close()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str, int], TcpProxy]]:
    """Build :class:`TcpProxy` instances that are stopped after the test."""
    proxies: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        proxies.append(TcpProxy(host, port))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.stop()
