"""Identity of a model's weights and of a run, for output metadata and resume fingerprints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_FULL_HASH_LIMIT = 2 << 30
_SAMPLE = 8 << 20


def weights_digest(root: Path) -> str:
    """sha256 over every weight file under `root` (sorted by relative path).

    Files are hashed in full up to 2 GiB in total; above that, each file contributes its size and its first and
    last 8 MiB, which still catches any re-save or different checkpoint at a fraction of the cost.
    """
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    total = sum(p.stat().st_size for p in files)
    h = hashlib.sha256()
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.relative_to(root)}\0{size}\0".encode())
        with open(p, "rb") as fh:
            if total <= _FULL_HASH_LIMIT:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            else:
                h.update(fh.read(_SAMPLE))
                fh.seek(max(size - _SAMPLE, 0))
                h.update(fh.read(_SAMPLE))
    return h.hexdigest()


def fingerprint(parts: dict[str, Any]) -> str:
    """A stable digest of everything that decides a run's output."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]
