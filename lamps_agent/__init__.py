"""lamps-agent: agent-aware LLM inference scheduling (LAMPS, INFERCEPT, WAIT) — the framework-free core."""

__version__ = "0.1.0"
