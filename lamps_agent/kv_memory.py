"""KV-cache memory, exact to the block: GPU blocks, host swap blocks, and who holds how many.

With ``prefix_caching`` (vLLM's automatic prefix caching, on by default in vLLM V1), a request
whose KV is freed leaves its full blocks hashed in the free pool: they count as free, and the
next allocation that needs them evicts them in LRU order (the free pool is a queue, evicted from
its head; a freed request's full blocks join its tail, last block first, so eviction shortens a
cached prefix from its end, while blocks with nothing reusable — a partial last block — go to its
head and are reused first, as vLLM 0.32's ``BlockPool.free_blocks`` orders them).  Until evicted, the owner's next turn takes them back instead of recomputing
them.  Cached prefixes are known by their owner (a request id), not by content hashes: in an agent
program each turn's prompt extends the previous turn's context, so the owner's prefix is exactly
what the next turn can hit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelShape:
    """The part of a model's shape that sets its KV size."""

    name: str
    n_layers: int
    n_kv_heads: int
    head_dim: int
    dtype_bytes: int = 2

    def __post_init__(self) -> None:
        for field_name in ("n_layers", "n_kv_heads", "head_dim", "dtype_bytes"):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"model.{field_name} must be > 0")

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, every layer: ``2 · layers · kv_heads · head_dim · bytes``."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.dtype_bytes


class OutOfBlocks(RuntimeError):
    pass


class _FreeRun:
    """Consecutive blocks of the free pool: a cached prefix of ``owner``, or plain free blocks."""

    __slots__ = ("blocks", "owner")

    def __init__(self, owner: Hashable | None, blocks: int) -> None:
        self.owner = owner
        self.blocks = blocks


class KVMemory:
    """Counts GPU and host blocks.  Requests hold whole blocks: ``ceil(tokens / block_size)``.

    ``free_gpu_blocks`` counts every free block, cached prefixes included (free but reusable,
    as vLLM's block pool reports them); ``cached_gpu_blocks`` is the cached part."""

    def __init__(
        self,
        *,
        num_gpu_blocks: int,
        num_host_blocks: int,
        block_size: int,
        prefix_caching: bool = False,
    ) -> None:
        if num_gpu_blocks <= 0 or block_size <= 0 or num_host_blocks < 0:
            raise ValueError("KV memory needs > 0 GPU blocks, >= 0 host blocks and block_size > 0")
        self.num_gpu_blocks = num_gpu_blocks
        self.num_host_blocks = num_host_blocks
        self.block_size = block_size
        self.free_gpu_blocks = num_gpu_blocks
        self.free_host_blocks = num_host_blocks
        self.peak_gpu_blocks = 0
        self.prefix_caching = prefix_caching
        self.cached_gpu_blocks = 0
        self.evicted_blocks = 0  # cached blocks reallocated before their owner came back
        # The free pool in eviction order, only tracked with prefix caching.
        self._lru: deque[_FreeRun] = deque([_FreeRun(None, num_gpu_blocks)])
        self._cached: dict[Hashable, _FreeRun] = {}

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    @property
    def used_gpu_blocks(self) -> int:
        return self.num_gpu_blocks - self.free_gpu_blocks

    def can_allocate(self, blocks: int) -> bool:
        return blocks <= self.free_gpu_blocks

    def allocate(self, blocks: int) -> None:
        """Take ``blocks`` from the free pool, evicting cached prefixes in LRU order."""
        if blocks > self.free_gpu_blocks:
            raise OutOfBlocks(f"need {blocks} GPU blocks, {self.free_gpu_blocks} free")
        self.free_gpu_blocks -= blocks
        used = self.num_gpu_blocks - self.free_gpu_blocks
        if used > self.peak_gpu_blocks:
            self.peak_gpu_blocks = used
        if self.prefix_caching:
            self._evict(blocks)

    def _evict(self, blocks: int) -> None:
        lru = self._lru
        while blocks > 0:
            run = lru[0]
            take = min(run.blocks, blocks)
            run.blocks -= take
            blocks -= take
            if run.owner is not None:
                self.cached_gpu_blocks -= take
                self.evicted_blocks += take
                if run.blocks == 0:
                    del self._cached[run.owner]
            if run.blocks == 0:
                lru.popleft()

    def free(self, blocks: int, *, owner: Hashable | None = None, cached: int = 0) -> None:
        """Return ``blocks`` to the free pool; with prefix caching, ``cached`` of them are full
        blocks (hashed), which stay reusable by ``owner`` (if any) until evicted."""
        self.free_gpu_blocks += blocks
        if self.free_gpu_blocks > self.num_gpu_blocks:
            raise RuntimeError("freed more GPU blocks than exist (double free)")
        if not self.prefix_caching or blocks == 0:
            return
        cached = min(cached, blocks)
        # As vLLM's BlockPool.free_blocks: blocks with no content to reuse (a partial last
        # block) go to the front of the pool, reused first; full blocks to its end.  Without an
        # owner (a finished program) nobody will hit them, but they stand where vLLM's do.
        self._prepend(blocks - cached)
        if cached > 0 and owner is None:
            self._append_plain(cached)
        elif cached > 0:
            self._forget(owner)
            run = _FreeRun(owner, cached)
            self._lru.append(run)
            self._cached[owner] = run
            self.cached_gpu_blocks += cached

    def _append_plain(self, blocks: int) -> None:
        lru = self._lru
        if lru and lru[-1].owner is None:
            lru[-1].blocks += blocks
        else:
            lru.append(_FreeRun(None, blocks))

    def _prepend(self, blocks: int) -> None:
        if blocks <= 0:
            return
        lru = self._lru
        if lru and lru[0].owner is None:
            lru[0].blocks += blocks
        else:
            lru.appendleft(_FreeRun(None, blocks))

    def _forget(self, owner: Hashable) -> None:
        """``owner``'s cached prefix becomes plain free blocks where it stands in the pool."""
        run = self._cached.pop(owner, None)
        if run is not None:
            self.cached_gpu_blocks -= run.blocks
            run.owner = None

    def cached_blocks(self, owner: Hashable) -> int:
        """Blocks of ``owner``'s prefix still in the free pool (0 without prefix caching)."""
        run = self._cached.get(owner)
        return run.blocks if run is not None else 0

    def take_cached(self, owner: Hashable, blocks: int) -> int:
        """``owner`` reuses the first ``blocks`` of its cached prefix: they leave the free pool
        (allocated to it); the rest of the prefix becomes plain free blocks.  Returns the blocks
        taken."""
        run = self._cached.get(owner)
        if run is None:
            return 0
        taken = min(blocks, run.blocks)
        self._forget(owner)
        run.blocks -= taken  # stays in the queue as plain free blocks (0: skipped on eviction)
        self.free_gpu_blocks -= taken
        used = self.num_gpu_blocks - self.free_gpu_blocks
        if used > self.peak_gpu_blocks:
            self.peak_gpu_blocks = used
        if run.blocks == 0:
            self._drop_empty_runs()
        return taken

    def _drop_empty_runs(self) -> None:
        lru = self._lru
        if len(lru) > 64 and sum(1 for r in lru if r.blocks == 0) > len(lru) // 2:
            self._lru = deque(r for r in lru if r.blocks > 0)

    def can_swap_out(self, blocks: int) -> bool:
        return blocks <= self.free_host_blocks

    def swap_out(self, blocks: int) -> None:
        """GPU -> host: the host blocks are taken, the GPU blocks freed."""
        if blocks > self.free_host_blocks:
            raise OutOfBlocks(f"need {blocks} host blocks, {self.free_host_blocks} free")
        self.free_host_blocks -= blocks
        self.free(blocks)

    def swap_in(self, host_blocks: int, gpu_blocks: int) -> None:
        """Host -> GPU: ``gpu_blocks`` allocated on the GPU, the host copy released."""
        self.allocate(gpu_blocks)
        self.free_host_blocks += host_blocks
        if self.free_host_blocks > self.num_host_blocks:
            raise RuntimeError("freed more host blocks than exist (double free)")

    def drop_host(self, blocks: int) -> None:
        """A host copy that will never be swapped back in (its session moved): freed."""
        self.free_host_blocks += blocks
        if self.free_host_blocks > self.num_host_blocks:
            raise RuntimeError("freed more host blocks than exist (double free)")
