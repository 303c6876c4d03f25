"""The plug-in's settings: from vLLM's ``--additional-config '{"lamps": {...}}'`` or ``LAMPS_*``
environment variables (the config wins), validated once at start-up.

``policy`` is any registered core policy (:data:`lamps_agent.policies.POLICIES`);
``policy_options`` are passed to it as they are (e.g. ``{"starvation_threshold": 100}`` for
``lamps``), so a new policy needs no change here."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lamps_agent.policies import POLICIES
from lamps_agent.presets import MeasuredEngine, check_measured
from lamps_agent.scheduler import PinLifetime

CLIENT_STRATEGY = ("advisory", "obey")

SUPPORTED_VLLM = ("0.32", "0.33")
"""vLLM minor versions whose scheduler the plug-in hooks (``running.pop()`` as the FCFS victim,
``allocate_slots``, ``_enqueue_waiting_request``, ``_free_request``): 0.32 is tested here (the CPU
build), 0.33's scheduler source was checked to keep every one of these plug points."""


class UnsupportedVllm(RuntimeError):
    pass


def check_vllm_version(version: str) -> None:
    """Refuse, at start-up and with the supported versions named, a vLLM whose scheduler the
    plug-in was not built against (its scheduler interface is not public)."""
    if ".".join(version.split(".")[:2]) not in SUPPORTED_VLLM:
        raise UnsupportedVllm(
            f"the lamps plug-in supports vLLM {' and '.join(f'{v}.x' for v in SUPPORTED_VLLM)}, "
            f"not {version}: install a supported version or run without the plug-in"
        )


STOCK = "stock"
"""The server policy that is vLLM's own scheduler, without the plug-in; every other server policy
is a core policy, run by the plug-in."""


def loads_plugin(policy: str) -> bool:
    """Whether a server for ``policy`` (``serve --policy``) loads the lamps plug-in."""
    return policy != STOCK


def server_policies() -> list[str]:
    """What ``serve`` and ``cluster`` accept as ``--policy``: every core policy, and stock."""
    return [*POLICIES.names(), STOCK]


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginConfig:
    policy: str = "lamps"  # any registered core policy
    policy_options: dict[str, Any] = field(default_factory=dict)
    preset: str = "h100-llama3-8b"  # cost constants for the waste and area estimates
    preset_file: str = ""  # a preset file (lamps-agent profile writes one) over ``preset``
    # A client's kv_strategy hint: "advisory" (the scheduler decides at the engine's live state;
    # the hint is only counted) or "obey" (tests and operators who want clients to decide).
    client_strategy: str = "advisory"
    ttl_factor: float = 1.5  # a pin lives ttl_factor × predicted tool time + ttl_slack ...
    ttl_slack: float = 1.0
    ttl_max: float = 600.0  # ... but never longer than this (seconds)
    default_output_tokens: int = 128  # server-side guess for a request without hints
    host_swap_gb: float = 4.0  # bound of the host-memory store behind the swap strategy
    # Hints are the clients' word: discount each client's by how far its past claims were from
    # what its turns then did (lamps_agent.predictors.calibrated; honest hints pass unchanged).
    calibrate: bool = True

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(
                f"lamps policy must be one of {', '.join(POLICIES.names())}, got {self.policy!r}"
            )
        if not isinstance(self.policy_options, dict):
            raise ValueError("policy_options must be a JSON object")
        if self.client_strategy not in CLIENT_STRATEGY:
            raise ValueError(f"client_strategy must be one of {', '.join(CLIENT_STRATEGY)}")
        for name in ("ttl_factor", "ttl_slack", "ttl_max", "host_swap_gb"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.default_output_tokens < 1:
            raise ValueError("default_output_tokens must be >= 1")

    @property
    def pin_lifetime(self) -> PinLifetime:
        return PinLifetime(factor=self.ttl_factor, slack=self.ttl_slack, cap=self.ttl_max)

    @classmethod
    def load(
        cls, additional_config: Any = None, environ: Mapping[str, str] | None = None
    ) -> PluginConfig:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"LAMPS_{f.name.upper()}")
            if raw is not None:
                values[f.name] = raw
        if isinstance(additional_config, Mapping):
            section = additional_config.get("lamps")
            if isinstance(section, str):
                section = json.loads(section)
            if isinstance(section, Mapping):
                values.update(section)
        types = {f.name: type(getattr(cls(), f.name)) for f in fields(cls)}
        unknown = set(values) - set(types)
        if unknown:
            raise ValueError(f"unknown lamps settings: {', '.join(sorted(unknown))}")
        return cls(**{k: _coerce(types[k], v) for k, v in values.items()})


def _coerce(kind: type, value: Any) -> Any:
    if kind is dict and isinstance(value, str):
        return json.loads(value)  # from an environment variable
    if kind is bool and isinstance(value, str):  # bool("false") is True
        if value.strip().lower() not in _BOOLS:
            raise ValueError(f"not a boolean: {value!r} (true / false)")
        return _BOOLS[value.strip().lower()]
    return kind(value)


_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}  # fmt: skip


def check_preset_engine(config: PluginConfig, vllm_config: Any, vllm_version: str) -> None:
    """Refuse to start on a preset file measured on another engine than this one (its block size,
    KV size, batching limits, model, CPU layout): its constants would be another engine's."""
    if not config.preset_file:
        return
    cache, sched, model = (
        vllm_config.cache_config,
        vllm_config.scheduler_config,
        vllm_config.model_config,
    )
    reserved = os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU")
    here = MeasuredEngine(
        model=Path(str(model.model)).name or None,
        block_size=cache.block_size,
        kv_cache_bytes=getattr(cache, "kv_cache_memory_bytes", None),
        token_budget=sched.max_num_batched_tokens,
        max_num_seqs=sched.max_num_seqs,
        max_model_len=model.max_model_len,
        reserved_cpus=int(reserved) if reserved and reserved.isdigit() else None,
        vllm=vllm_version,
    )
    check_measured(config.preset_file, here)
