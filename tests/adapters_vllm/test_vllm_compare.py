"""``bench --engine compare`` sets every server up alike: the same KV connector (stock included),
the same reserved CPUs, the no-op control always present, and a layout read back from the logs.
No engine is started here (the real run is in docs/benchmarks.md)."""

from __future__ import annotations

import json

import pytest

from adapters.vllm.cli import NOOP, compare_labels, server_policy
from adapters.vllm.config import STOCK, loads_plugin, server_policies
from adapters.vllm.server import ServeOptions, server_command, server_env, server_layout
from lamps_agent.policies import POLICIES

LOG = """\
(APIServer pid=1) INFO [api_utils.py:286] non-default args: {'model': '/tmp/tiny-llama'}
(EngineCore pid=2) INFO [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: model='/tmp/tiny-llama', enable_prefix_caching=True
(EngineCore pid=2) INFO [ompmultiprocessing.py:185] OpenMP thread binding info:
(EngineCore pid=2) INFO [ompmultiprocessing.py:185] \tlocal_world_size=1, reserve_cpu_num={reserve}
(EngineCore pid=2) INFO [ompmultiprocessing.py:185] \tlocal_rank=0, core ids={cores}
(EngineCore pid=2) INFO [ompmultiprocessing.py:185] \treserved_cpus={reserved}
{connector}"""


def log(reserve: int, cores: str, reserved: str, connector: bool) -> str:
    line = "(EngineCore pid=2) INFO [factory.py:62] Creating v1 connector with name: HostSwapConnector and engine_id: x"
    text = LOG.replace("{reserve}", str(reserve)).replace("{cores}", cores)
    return text.replace("{reserved}", reserved).replace("{connector}", line if connector else "")


def test_stock_loads_the_same_connector_as_the_plugin() -> None:
    stock = server_command(ServeOptions(model="m", policy="stock", swap=True))
    plugin = server_command(ServeOptions(model="m", policy="vllm", swap=True))
    assert "--scheduler-cls" not in stock
    conf = stock[stock.index("--kv-transfer-config") + 1]
    assert conf == plugin[plugin.index("--kv-transfer-config") + 1]
    assert json.loads(conf)["kv_connector"] == "HostSwapConnector"
    assert "--kv-transfer-config" not in server_command(ServeOptions(model="m", policy="stock"))


def test_only_stock_runs_without_the_plugin() -> None:
    assert server_policies() == [*POLICIES.names(), "stock"] and STOCK == "stock"
    assert not loads_plugin(STOCK)
    for policy in POLICIES.names():
        assert loads_plugin(policy)
        assert "--scheduler-cls" in server_command(ServeOptions(model="m", policy=policy))
    assert "--scheduler-cls" not in server_command(ServeOptions(model="m", policy=STOCK))


def test_reserved_cpus_reach_the_server_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    env = server_env(ServeOptions(model="m", policy="stock", reserved_cpus=1))
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in server_env(ServeOptions(model="m"))


def test_the_noop_control_is_always_compared() -> None:
    assert compare_labels("stock,lamps") == ["stock", NOOP, "lamps"]
    assert compare_labels("lamps,infercept") == [NOOP, "lamps", "infercept"]
    assert compare_labels("stock,noop,lamps") == ["stock", NOOP, "lamps"]
    assert server_policy(NOOP) == "vllm" and server_policy("lamps") == "lamps"


def test_the_layout_is_read_from_the_startup_log() -> None:
    # what vLLM-CPU 0.32 does on 2 cores: a connector reserves one more core, so with none
    # left the engine's threads spread over both
    default_connector = server_layout(log(2, "[0, 1]", "[]", connector=True))
    plain = server_layout(log(1, "[0]", "[1]", connector=False))
    even = server_layout(log(1, "[0]", "[1]", connector=True))
    assert default_connector.omp_cores == "[0, 1]" and default_connector.reserved_cores == "[]"
    assert plain.connector == "none" and even.connector == "HostSwapConnector"
    assert "enable_prefix_caching=True" in even.engine_config
    assert not default_connector.same_as(even) and not plain.same_as(even)
    assert even.same_as(server_layout(log(1, "[0]", "[1]", connector=True)))
    assert even.text() == "OpenMP cores [0], reserved [1], connector HostSwapConnector"
