"""The cluster's supervision and CPU layout, with fake processes and a fake clock (no vLLM, no
router): back-off, the one-line death report, the process-group kill, restarts and their
switch, the start-up timeout; each replica's cores; and ``kill_group`` on a real orphaned child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.vllm.tools.cluster import ClusterOptions, cpu_layout, group_members, kill_group
from adapters.vllm.tools.cpu_layout import format_cores, split_cores
from adapters.vllm.tools.server import ServeOptions
from adapters.vllm.tools.supervisor import Backoff, Phase, Supervisor, describe_exit


@dataclass
class FakeProc:
    pid: int
    code: int | None = None

    def poll(self) -> int | None:
        return self.code


@dataclass
class FakeMember:
    name: str
    url: str
    log: Path
    proc: FakeProc


@dataclass
class Fleet:
    """Replicas, a clock, and a record of what the supervisor did to them."""

    now: float = 0.0
    serving: set[str] = field(default_factory=set)
    killed: list[int] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    next_pid: int = 100

    def member(self, index: int) -> FakeMember:
        self.next_pid += 1
        url = f"http://r{index}"
        return FakeMember(f"replica-{index}", url, Path(f"logs/replica-{index}.log"),
                          FakeProc(self.next_pid))  # fmt: skip

    def kill_group(self, proc: FakeProc) -> int:
        self.killed.append(proc.pid)
        return 3  # the engine core, the worker, the resource tracker

    def supervisor(self, replicas: int = 2, **kwargs: object) -> Supervisor:
        members = [self.member(i) for i in range(replicas)]
        self.serving |= {m.url for m in members}
        return Supervisor(
            members, respawn=self.member, serves=lambda url: url in self.serving,
            kill_group=self.kill_group, say=self.lines.append, clock=lambda: self.now,
            **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip


def _die(sup: Supervisor, index: int, code: int = -signal.SIGKILL) -> None:
    proc = sup.slots[index].member.proc
    assert isinstance(proc, FakeProc)
    proc.code = code


def test_backoff_doubles_up_to_its_most() -> None:
    b = Backoff(first_s=1, factor=2, most_s=10)
    assert [b.delay(k) for k in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    with pytest.raises(ValueError):
        Backoff(first_s=5, most_s=1)


def test_a_dead_replica_is_reported_killed_restarted_and_serves_again() -> None:
    fleet = Fleet()
    sup = fleet.supervisor(backoff=Backoff(first_s=2))
    assert not sup.check() and sup.num_serving == 2
    dead_pid = sup.slots[1].member.proc.pid
    _die(sup, 1)
    fleet.now = 1.0
    assert sup.check()
    assert fleet.lines == [
        "replica-1: died (killed by SIGKILL), log logs/replica-1.log; "
        "3 processes of its group killed; restart 1 in 2 s"
    ]
    assert fleet.killed == [dead_pid] and sup.slots[1].phase is Phase.WAITING
    fleet.now = 2.5
    assert not sup.check()  # the back-off is not over
    fleet.now = 3.0
    fleet.serving.discard("http://r1")  # the new server is still loading its model
    assert sup.check() and sup.slots[1].phase is Phase.STARTING
    assert sup.slots[1].member.proc.pid != dead_pid and sup.slots[1].num_restarts == 1
    fleet.now = 40.0
    fleet.serving.add("http://r1")
    assert sup.check() and sup.slots[1].phase is Phase.SERVING
    assert fleet.lines[-1] == "replica-1: serving again (restart 1, 39 s after its death)"
    assert sup.slots[0].phase is Phase.SERVING and len(fleet.killed) == 1


def test_a_replica_that_keeps_dying_waits_longer_until_it_has_served_a_while() -> None:
    fleet = Fleet()
    sup = fleet.supervisor(replicas=1, backoff=Backoff(first_s=1, reset_after_s=60))
    delays = []
    for _ in range(3):
        _die(sup, 0, code=1)
        sup.check()
        delays.append(sup.slots[0].due - fleet.now)
        fleet.now = sup.slots[0].due
        sup.check()  # restarted
        sup.check()  # serves at once
    assert delays == [1, 2, 4]
    assert "died (exit status 1)" in fleet.lines[0]
    fleet.now += 61
    sup.check()  # served a minute: the next death starts from the first delay again
    _die(sup, 0)
    sup.check()
    assert sup.slots[0].due - fleet.now == 1


def test_no_restart_leaves_it_dead_and_says_so() -> None:
    fleet = Fleet()
    sup = fleet.supervisor(restart=False)
    _die(sup, 0, code=-signal.SIGTERM)
    sup.check()
    fleet.now = 1000
    sup.check()
    assert sup.slots[0].phase is Phase.STOPPED and sup.slots[0].num_restarts == 0
    assert fleet.lines == [
        "replica-0: died (killed by SIGTERM), log logs/replica-0.log; "
        "3 processes of its group killed; not restarted (--no-restart)"
    ]
    assert sup.num_serving == 1


def test_a_replacement_that_never_serves_is_killed_and_retried() -> None:
    fleet = Fleet()
    sup = fleet.supervisor(replicas=1, start_timeout_s=100, backoff=Backoff(first_s=1))
    _die(sup, 0)
    sup.check()
    fleet.serving.clear()
    fleet.now = 1
    sup.check()  # started again, never answers
    fleet.now = 102
    sup.check()
    assert "not serving 100 s after start" in fleet.lines[-1]
    assert "restart 2 in 2 s" in fleet.lines[-1] and len(fleet.killed) == 2


def test_describe_exit() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(-200) == "killed by signal 200"


@pytest.mark.parametrize(
    ("cores", "replicas", "reserved", "expected", "reserved_left", "note"),
    [
        (range(8), 2, 1, ["0-3", "4-6"], "7", ""),
        (range(8), 2, 0, ["0-3", "4-7"], "", ""),
        (range(2), 2, 1, ["0", "1"], "", "none to reserve"),  # this machine
        (range(2), 1, 1, ["0"], "1", ""),
        (range(2), 3, 1, ["0", "1", "0"], "", "3 replicas on 2 cores"),
        ([0], 2, 0, ["0", "0"], "", "2 replicas on 1 core"),
        ([4, 5, 6, 9], 2, 0, ["4-5", "6,9"], "", ""),
    ],
)
def test_split_cores(
    cores: range | list[int],
    replicas: int,
    reserved: int,
    expected: list[str],
    reserved_left: str,
    note: str,
) -> None:
    layout = split_cores(list(cores), replicas, reserved)
    assert [layout.bind(i) for i in range(replicas)] == expected
    assert format_cores(layout.reserved) == reserved_left
    assert note in layout.note and bool(note) == bool(layout.note)


def test_fewer_cores_than_replicas_never_puts_all_on_one() -> None:
    layout = split_cores([0, 1], 5)
    assert {c for cs in layout.replica_cores for c in cs} == {0, 1}
    assert "at most 3 on one core" in layout.note


def test_cluster_layout_per_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    opts = ClusterOptions(serve=ServeOptions(model="m"), replicas=2, reserved_cpus=1, cores=[0, 1])
    layout = cpu_layout(opts)
    assert layout is not None and layout.text() == "replica-0 cores 0, replica-1 cores 1"
    from adapters.vllm.tools.cluster import replica_env

    env = replica_env(opts, 1, opts.serve, layout)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "1" and env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
    assert cpu_layout(ClusterOptions(serve=opts.serve, gpus_per_replica=1)) is None
    assert cpu_layout(ClusterOptions(serve=opts.serve, bind_cores=False)) is None
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    assert cpu_layout(opts) is None  # the user's binding wins


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_group_ends_the_orphans_of_a_dead_leader() -> None:
    # a leader that starts two children in its group (as vLLM's server starts its engine
    # processes) and dies; the children live on, re-parented
    script = (
        "import subprocess, sys, os\n"
        "for _ in range(2):\n"
        "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('up', flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True
    )
    assert leader.stdout is not None and leader.stdout.readline() == b"up\n"
    assert leader.wait(timeout=10) == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while len(group_members(leader.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = group_members(leader.pid)
    assert len(orphans) == 2 and leader.pid not in orphans
    try:
        assert kill_group(leader) == 2
        assert group_members(leader.pid) == []
    finally:
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
