"""KV-cache memory, exact to the block: GPU blocks, host swap blocks, and who holds how many."""

from __future__ import annotations

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


class KVMemory:
    """Counts GPU and host blocks.  Requests hold whole blocks: ``ceil(tokens / block_size)``."""

    def __init__(self, *, num_gpu_blocks: int, num_host_blocks: int, block_size: int) -> None:
        if num_gpu_blocks <= 0 or block_size <= 0 or num_host_blocks < 0:
            raise ValueError("KV memory needs > 0 GPU blocks, >= 0 host blocks and block_size > 0")
        self.num_gpu_blocks = num_gpu_blocks
        self.num_host_blocks = num_host_blocks
        self.block_size = block_size
        self.free_gpu_blocks = num_gpu_blocks
        self.free_host_blocks = num_host_blocks
        self.peak_gpu_blocks = 0

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    @property
    def used_gpu_blocks(self) -> int:
        return self.num_gpu_blocks - self.free_gpu_blocks

    def can_allocate(self, blocks: int) -> bool:
        return blocks <= self.free_gpu_blocks

    def allocate(self, blocks: int) -> None:
        if blocks > self.free_gpu_blocks:
            raise OutOfBlocks(f"need {blocks} GPU blocks, {self.free_gpu_blocks} free")
        self.free_gpu_blocks -= blocks
        used = self.num_gpu_blocks - self.free_gpu_blocks
        if used > self.peak_gpu_blocks:
            self.peak_gpu_blocks = used

    def free(self, blocks: int) -> None:
        self.free_gpu_blocks += blocks
        if self.free_gpu_blocks > self.num_gpu_blocks:
            raise RuntimeError("freed more GPU blocks than exist (double free)")

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
