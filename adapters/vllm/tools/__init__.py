"""Tooling around the vLLM plug-in: what starts, measures and drives vLLM servers from outside.

``server`` (vLLM's OpenAI server with or without the plug-in), ``cluster`` (replicas behind
vllm-router), ``supervisor`` (the cluster's watch over its replicas), ``cpu_layout`` (each
replica's cores), ``replay`` (an agent trace against a server), ``profile`` (a preset fitted to an
engine's step times), ``validate`` (the simulator against the real engine), ``tiny_model`` (a tiny
local Llama for tests) and ``cli`` (the ``serve`` / ``cluster`` / ``bench --engine`` sub-commands
of ``lamps-agent``).

vLLM never loads this folder: the plug-in it loads through ``--scheduler-cls`` and
``--kv-transfer-config`` is the parent package, and imports nothing from here.
"""
