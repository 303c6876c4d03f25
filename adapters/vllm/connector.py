"""``HostSwapConnector``: the swap strategy — a paused turn's KV blocks copied to a bounded store in
host memory, keyed by block hash, and copied back for the next turn's matching prefix.

vLLM's KV-connector interface has two halves in (possibly) two processes:

* scheduler side — ``request_finished`` is asked, for each finished turn, whether it takes over
  freeing its blocks.  For a turn the LAMPS scheduler marked for swap it plans a *save* of its full
  blocks and keeps them allocated until the worker says the copy is done.  ``get_num_new_matched_
  tokens`` tells vLLM how much of a new request's prompt the store holds (beyond the local prefix
  cache hit); ``update_state_after_alloc`` plans the *load* into the blocks vLLM allocated.  The
  scheduler side keeps its own index of stored hashes (LRU, bounded by ``host_swap_gb``), so it
  never promises what the worker no longer has; evictions travel to the worker with each step.
* worker side — ``register_kv_caches`` gets the paged KV tensors; ``start_load_kv`` runs the
  step's evictions, saves (block → host copy, every layer) and loads (host copy → block);
  ``get_finished`` reports the saved turns so the scheduler frees their blocks.

Enable with ``--kv-transfer-config '{"kv_connector": "HostSwapConnector",
"kv_connector_module_path": "adapters.vllm.connector", "kv_role": "kv_both"}'`` (``lamps-agent
serve --swap`` does it).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

log = logging.getLogger("lamps.vllm")
SWAP_MARK = "_lamps_swap"  # set on a vLLM Request by the plug-in (lamps_core.SWAP_MARK)


@dataclass
class HostSwapMetadata(KVConnectorMetadata):
    saves: list[tuple[str, list[int], list[Any]]] = field(
        default_factory=list
    )  # req, blocks, hashes
    loads: list[tuple[list[int], list[Any]]] = field(default_factory=list)  # blocks, hashes
    evictions: list[Any] = field(default_factory=list)


class HostSwapConnector(KVConnectorBase_V1):
    def __init__(
        self,
        vllm_config: VllmConfig,
        role: KVConnectorRole,
        kv_cache_config: KVCacheConfig | None = None,
    ) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.block_size = vllm_config.cache_config.block_size
        extra = self._kv_transfer_config.kv_connector_extra_config or {}
        host_gb = float(extra.get("host_swap_gb", 4.0))
        per_block = _bytes_per_block(kv_cache_config)
        self.capacity_blocks = int(host_gb * 1e9 // per_block) if per_block else 0
        # scheduler side
        self._index: OrderedDict[Any, None] = OrderedDict()
        self._pending = HostSwapMetadata()
        self._matches: dict[str, tuple[int, list[Any]]] = {}
        self.saved_blocks = 0
        self.loaded_blocks = 0
        # worker side
        self._caches: dict[str, torch.Tensor] = {}
        self._block_dim: dict[str, int] = {}
        self._store: dict[Any, dict[str, torch.Tensor]] = {}
        self._done_saving: set[str] = set()
        self._num_blocks = kv_cache_config.num_blocks if kv_cache_config is not None else 0

    # -- scheduler side ------------------------------------------------------------------------
    def request_finished(
        self, request: Request, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        if not getattr(request, SWAP_MARK, False) or self.capacity_blocks <= 0:
            return False, None
        full = min(
            request.num_computed_tokens // self.block_size,
            len(block_ids),
            len(request.block_hashes),
        )
        hashes = list(request.block_hashes[:full])
        ids = list(block_ids[:full])
        todo = [(b, h) for b, h in zip(ids, hashes, strict=True) if h not in self._index]
        for _, h in zip(ids, hashes, strict=True):
            if h in self._index:
                self._index.move_to_end(h)
        if not todo:
            return False, None
        for _, h in todo:
            self._index[h] = None
        while len(self._index) > self.capacity_blocks:
            old, _ = self._index.popitem(last=False)
            self._pending.evictions.append(old)
        self._pending.saves.append((request.request_id, [b for b, _ in todo], [h for _, h in todo]))
        self.saved_blocks += len(todo)
        return True, None  # blocks stay allocated until the worker has copied them

    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        start = num_computed_tokens // self.block_size
        hashes = request.block_hashes
        limit = (request.num_prompt_tokens - 1) // self.block_size  # leave a token to compute
        n = 0
        while start + n < min(len(hashes), limit) and hashes[start + n] in self._index:
            n += 1
        if n == 0:
            return 0, False
        self._matches[request.request_id] = (start, list(hashes[start : start + n]))
        return n * self.block_size, False

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        match = self._matches.pop(request.request_id, None)
        if match is None or num_external_tokens <= 0:
            return
        start, hashes = match
        n = num_external_tokens // self.block_size
        ids = blocks.get_block_ids()[0][start : start + n]
        for h in hashes[:n]:
            self._index.move_to_end(h)
        self._pending.loads.append((list(ids), hashes[:n]))
        self.loaded_blocks += n

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta, self._pending = self._pending, HostSwapMetadata()
        return meta

    # -- worker side ---------------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._caches = dict(kv_caches)
        for name, tensor in self._caches.items():
            dims = [d for d, size in enumerate(tensor.shape) if size == self._num_blocks]
            if not dims:
                raise RuntimeError(
                    f"cannot find the block dimension of KV cache {name} {tuple(tensor.shape)}"
                )
            self._block_dim[name] = dims[0]

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if not isinstance(meta, HostSwapMetadata):
            return
        for h in meta.evictions:
            self._store.pop(h, None)
        for req_id, ids, hashes in meta.saves:
            index = torch.tensor(ids, dtype=torch.long)
            copies = {
                name: t.index_select(self._block_dim[name], index.to(t.device)).to("cpu", copy=True)
                for name, t in self._caches.items()
            }
            for i, h in enumerate(hashes):
                self._store[h] = {
                    name: c.select(self._block_dim[name], i).clone() for name, c in copies.items()
                }
            self._done_saving.add(req_id)
        for ids, hashes in meta.loads:
            for block_id, h in zip(ids, hashes, strict=True):
                saved = self._store.get(h)
                if saved is None:  # evicted between plan and load: vLLM recomputes on error report
                    log.warning("host KV block missing for a planned load")
                    continue
                for name, t in self._caches.items():
                    t.select(self._block_dim[name], block_id).copy_(saved[name])

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(
        self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any
    ) -> None:
        return

    def wait_for_save(self) -> None:
        return

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        done, self._done_saving = self._done_saving, set()
        return (done or None), None


def _bytes_per_block(kv_cache_config: Any) -> int:
    if kv_cache_config is None or not getattr(kv_cache_config, "num_blocks", 0):
        return 0
    total = sum(int(t.size) for t in getattr(kv_cache_config, "kv_cache_tensors", []))
    return total // kv_cache_config.num_blocks if total else 0
