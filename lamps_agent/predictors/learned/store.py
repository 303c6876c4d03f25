"""Versioned storage of trained models next to the tool registry.

Layout (``root`` defaults to ``$LAMPS_PREDICTOR_DIR`` or ``~/.lamps-agent``, the registry's
folder)::

    <root>/predictors/output-length/
        CURRENT                      "v0003" - the version servers load; rewritten atomically
        v0003/manifest.json          bins, features, encoder, head shape, training config,
                                     training-data hash, metrics
        v0003/head.pt                the MLP's state dict (torch.save, loaded weights_only)
        encoders/minilm-static-<sha>.npy   the distilled token table, shared by versions

A version directory is written under a temporary name and renamed into place, then ``CURRENT`` is
replaced (``os.replace``): a server watching ``CURRENT`` never sees a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lamps_agent.predictors.learned.encoder import (
    ContextualEncoder,
    Encoder,
    HashingEncoder,
    StaticEncoder,
    distill_static_table,
)
from lamps_agent.predictors.learned.features import (
    BIN_WIDTH,
    MAX_STEP,
    N_BINS,
    FeatureSpec,
)
from lamps_agent.predictors.learned.model import HeadShape, LengthModel, build_head

ENV_DIR = "LAMPS_PREDICTOR_DIR"
FORMAT = 1
_VERSION = re.compile(r"^v(\d{4,})$")


def default_root() -> Path:
    return Path(os.environ.get(ENV_DIR) or Path.home() / ".lamps-agent").expanduser()


class ModelStore:
    """Versioned models of one predictor kind under ``<root>/predictors/<kind>/``."""

    def __init__(self, root: str | Path | None = None, *, kind: str = "output-length") -> None:
        self.dir = (Path(root) if root is not None else default_root()) / "predictors" / kind

    @property
    def current_file(self) -> Path:
        return self.dir / "CURRENT"

    def versions(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        found = [p.name for p in self.dir.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def current(self) -> str | None:
        """The version named by ``CURRENT`` (or ``None`` when nothing was saved)."""
        try:
            name = self.current_file.read_text().strip()
        except OSError:
            return None
        return name if _VERSION.match(name) and (self.dir / name).is_dir() else None

    def save(self, model: LengthModel, *, extra: dict[str, Any] | None = None) -> str:
        """Write ``model`` as the next version and make it current; returns the version name."""
        import torch

        self.dir.mkdir(parents=True, exist_ok=True)
        versions = self.versions()
        version = f"v{(int(versions[-1][1:]) + 1 if versions else 1):04d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self.dir))
        tmp.chmod(0o755)  # mkdtemp makes it private; servers may run as another user
        manifest = {
            "format": FORMAT,
            "version": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "objective": model.objective,
            "point": model.point,
            "bins": {"n": N_BINS, "width": BIN_WIDTH, "values": model.bin_values.tolist()},
            "features": {**model.spec.to_json(), "max_step": MAX_STEP},
            "text_chars": model.text_chars,
            "encoder": self._save_encoder(model.encoder),
            "head": asdict(model.shape),
            **(extra or {}),
        }
        torch.save(model.head.state_dict(), tmp / "head.pt")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        tmp.rename(self.dir / version)
        self._set_current(version)
        return version

    def _set_current(self, version: str) -> None:
        fd, name = tempfile.mkstemp(prefix=".CURRENT-", dir=self.dir)
        with os.fdopen(fd, "w") as fh:
            fh.write(version + "\n")
        os.chmod(name, 0o644)
        os.replace(name, self.current_file)

    def _save_encoder(self, encoder: Encoder | None) -> dict[str, Any]:
        inner = getattr(encoder, "encoder", encoder)  # unwrap a CachedEncoder
        if inner is None:
            return {"kind": "none"}
        if isinstance(inner, HashingEncoder):
            return {"kind": "hashing", "dim": inner.dim}
        if isinstance(inner, ContextualEncoder):
            return {"kind": "minilm-contextual", "max_tokens": inner.max_tokens}
        if isinstance(inner, StaticEncoder):
            table = inner.table.astype(np.float16)
            digest = hashlib.sha256(table.tobytes()).hexdigest()[:16]
            rel = f"encoders/minilm-static-{digest}.npy"
            if not (self.dir / rel).exists():
                (self.dir / "encoders").mkdir(parents=True, exist_ok=True)
                np.save(self.dir / rel, table)
            return {"kind": "minilm-static", "table": rel, "max_tokens": inner.max_tokens}
        raise ValueError(f"cannot save encoder {inner.name!r}")

    def static_table(self) -> np.ndarray:
        """The distilled MiniLM token table: reused from this store if present, else distilled
        (about a minute) - the caller saves it with the next model."""
        tables = sorted((self.dir / "encoders").glob("minilm-static-*.npy"))
        table: np.ndarray = (
            np.load(tables[-1]).astype(np.float32) if tables else distill_static_table()
        )
        return table

    def manifest(self, version: str | None = None) -> dict[str, Any]:
        version = version or self.current()
        if version is None:
            raise FileNotFoundError(f"no saved model under {self.dir}")
        data: dict[str, Any] = json.loads((self.dir / version / "manifest.json").read_text())
        return data

    def load(self, version: str | None = None) -> tuple[str, LengthModel]:
        """(version, model); ``None`` = the current version.  Raises ``FileNotFoundError`` when
        nothing was saved and ``ModuleNotFoundError`` without the extra."""
        import torch

        version = version or self.current()
        if version is None:
            raise FileNotFoundError(f"no saved model under {self.dir}")
        manifest = self.manifest(version)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{self.dir / version}: unsupported format {manifest.get('format')}")
        shape = HeadShape(**manifest["head"])
        head = build_head(shape)
        state = torch.load(self.dir / version / "head.pt", weights_only=True)
        head.load_state_dict(state)
        model = LengthModel(
            spec=FeatureSpec.from_json(manifest["features"]),
            encoder=self._load_encoder(manifest["encoder"]),
            head=head,
            shape=shape,
            objective=manifest["objective"],
            bin_values=np.array(manifest["bins"]["values"]),
            text_chars=int(manifest["text_chars"]),
            point=manifest.get("point", "median"),
        )
        return version, model

    def _load_encoder(self, info: dict[str, Any]) -> Encoder | None:
        kind = info["kind"]
        if kind == "none":
            return None
        if kind == "hashing":
            return HashingEncoder(dim=int(info["dim"]))
        if kind == "minilm-contextual":
            return ContextualEncoder(max_tokens=int(info["max_tokens"]))
        if kind == "minilm-static":
            table = np.load(self.dir / info["table"])
            return StaticEncoder(table, max_tokens=int(info["max_tokens"]))
        raise ValueError(f"unknown encoder kind {kind!r}")
