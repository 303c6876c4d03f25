"""``bench --engine compare`` sets every server up alike: the same KV connector (stock included),
the same reserved CPUs, the no-op control always present, and a layout read back from the logs.
No engine is started here (the real run is in docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from adapters.vllm.config import STOCK, loads_plugin, server_policies
from adapters.vllm.tools.cli import (
    NOOP,
    _fitting_programs,
    compare_labels,
    max_model_len,
    policy_options,
    server_policy,
)
from adapters.vllm.tools.server import ServeOptions, server_command, server_env, server_layout
from lamps_agent.policies import POLICIES
from lamps_agent.workloads.longctx import generate_longctx, peak_context
from lamps_agent.workloads.scale import scale_tokens

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


def test_the_server_process_imports_adapters_from_the_package_root() -> None:
    # Its PYTHONPATH starts at the folder that holds ``adapters`` (not ``adapters/``, where
    # ``adapters/vllm`` would stand in for the real vLLM), wherever the launcher module sits.
    root = Path(server_env(ServeOptions(model="m"))["PYTHONPATH"].split(os.pathsep)[0])
    assert (root / "adapters" / "vllm" / "scheduler.py").is_file()
    assert not (root / "vllm").exists()


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


def test_the_servers_max_model_len_is_read_from_the_vllm_args() -> None:
    assert max_model_len(["--enforce-eager", "--max-model-len=4096"]) == 4096
    assert max_model_len(["--max-model-len", "2048", "--block-size=32"]) == 2048
    assert max_model_len(["--block-size=32"]) is None
    with pytest.raises(ValueError, match="--max-model-len 'x'"):
        max_model_len(["--max-model-len=x"])


class _Console:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, text: str) -> None:
        self.lines.append(text)


def test_programs_longer_than_the_server_are_left_out_and_counted() -> None:
    programs = scale_tokens(generate_longctx(40, kinds="coding", seed=0), 1 / 16)
    console = _Console()
    kept = _fitting_programs(programs, ["--max-model-len=2048"], console)
    assert kept and all(peak_context(p) < 2048 for p in kept)
    assert console.lines == [
        f"{len(programs) - len(kept)} of {len(programs)} programs are longer than "
        "--max-model-len 2048: left out"
    ]
    assert _fitting_programs(programs, [], console) == programs
    with pytest.raises(ValueError, match="--token-scale"):
        _fitting_programs(generate_longctx(5, kinds="coding"), ["--max-model-len=1000"], console)


def test_the_unloaded_p99_times_each_program_alone_once(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse
    import types

    from adapters.vllm.tools import replay as replay_mod
    from adapters.vllm.tools.cli import _report_unloaded
    from adapters.vllm.tools.replay import ProgramResult
    from lamps_agent.workloads.arrivals import Arrival

    programs = generate_longctx(3, kinds="coding", seed=0)
    seconds = {p.program_id: 2.0 + i for i, p in enumerate(programs)}
    calls: list[str] = []

    async def alone(arrivals: Any, opts: Any) -> list[ProgramResult]:
        (a,) = arrivals
        calls.append(a.program.program_id)
        return [ProgramResult(a.program, 0.0, seconds[a.program.program_id], 0.1, 0)]

    monkeypatch.setattr(replay_mod, "replay", alone)
    args = argparse.Namespace(
        model="m", time_scale=0.05, no_hints=False, vocab_high=300, out=str(tmp_path)
    )
    arrivals = [Arrival(float(i), programs[i % 2]) for i in range(4)]  # two programs, twice each
    loaded = [
        types.SimpleNamespace(
            policy=policy, predictor="hints", qps=3.0, e2e=types.SimpleNamespace(p99=9.0, mean=m)
        )
        for policy, m in (("stock", 5.0), ("lamps", 3.0), ("lamps", 2.6), ("lamps", 4.0))
    ]
    known = _report_unloaded(args, arrivals, 3.0, "stock", "http://x", {}, loaded, _Console())
    assert sorted(calls) == sorted(p.program_id for p in programs[:2])
    (record,) = json.loads((tmp_path / "unloaded.json").read_text())
    assert record["unloaded_mean_s"] == 2.5 and record["unloaded_p99_s"] == pytest.approx(3.0)
    assert record["loaded_over_unloaded_p99"] == pytest.approx(3.0)
    # the room above each program alone: stock's mean 5 s is half floor, lamps' median 3 s 1/6
    assert record["room_over_unloaded"] == {"stock": 0.5, "lamps": pytest.approx(1 / 6, abs=1e-4)}
    # At the next rate, only programs not yet timed are replayed.
    _report_unloaded(args, [Arrival(0.0, programs[2]), *arrivals], 4.0, "stock", "http://x",
                     known, loaded, _Console())  # fmt: skip
    assert len(calls) == 3


def test_one_servers_policy_gets_its_own_options() -> None:
    labels = ["stock", NOOP, "lamps", "program"]
    options = policy_options(['program={"load_window_s": 6}'], labels)
    assert options == {"program": {"load_window_s": 6}}
    cmd = server_command(
        ServeOptions(model="m", policy="program", policy_options=options["program"])
    )
    config = json.loads(cmd[cmd.index("--additional-config") + 1])
    assert config["lamps"]["policy_options"] == {"load_window_s": 6}
    plain = server_command(ServeOptions(model="m", policy="lamps"))
    assert (
        "policy_options" not in json.loads(plain[plain.index("--additional-config") + 1])["lamps"]
    )
    for bad, why in (
        (['stock={"a": 1}'], "LABEL one of"),
        (['wait={"a": 1}'], "LABEL one of"),
        (["program"], "LABEL one of"),
        (["program={"], "not JSON"),
        (["program=[1]"], "a JSON object"),
        (['program={"a": 1}', 'program={"a": 2}'], "twice"),
    ):
        with pytest.raises(ValueError, match=why):
            policy_options(bad, labels)
