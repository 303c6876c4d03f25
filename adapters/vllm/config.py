"""The plug-in's settings: from vLLM's ``--additional-config '{"lamps": {...}}'`` or ``LAMPS_*``
environment variables (the config wins), validated once at start-up."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

PLUGIN_POLICIES = ("lamps", "infercept", "vllm")


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginConfig:
    policy: str = "lamps"  # lamps | infercept | vllm (stock order and discard; counters only)
    preset: str = "h100-llama3-8b"  # cost constants for the waste and area estimates
    starvation_threshold: int = 100  # schedule() calls a request may wait before it leads
    ttl_factor: float = 1.5  # a pin lives ttl_factor × predicted tool time + ttl_slack ...
    ttl_slack: float = 1.0
    ttl_max: float = 600.0  # ... but never longer than this (seconds)
    default_output_tokens: int = 128  # server-side guess for a request without hints
    host_swap_gb: float = 4.0  # bound of the host-memory store behind the swap strategy

    def __post_init__(self) -> None:
        if self.policy not in PLUGIN_POLICIES:
            raise ValueError(
                f"lamps policy must be one of {', '.join(PLUGIN_POLICIES)}, got {self.policy!r}"
            )
        if self.starvation_threshold < 1:
            raise ValueError("starvation_threshold must be >= 1")
        for name in ("ttl_factor", "ttl_slack", "ttl_max", "host_swap_gb"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.default_output_tokens < 1:
            raise ValueError("default_output_tokens must be >= 1")

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
        return cls(**{k: types[k](v) for k, v in values.items()})
