"""Identity of a model's weights and of a run, for output metadata and resume fingerprints."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_FULL_HASH_LIMIT = 2 << 30
_SAMPLE = 8 << 20


def weights_digest(root: Path) -> str:
    """sha256 over every weight file under `root` (sorted by relative path).

    Files are hashed in full up to 2 GiB in total; above that, each file contributes its size and its first and
    last 8 MiB, which still catches any re-save or different checkpoint at a fraction of the cost. A process asks
    for it several times (the run's identity, each compiled body's cache key): files whose size and mtime are
    unchanged are not read again.
    """
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    listing = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _digest(str(root), listing)


@lru_cache(maxsize=32)
def _digest(root_name: str, listing: tuple[tuple[str, int, int], ...]) -> str:
    root = Path(root_name)
    files = [Path(name) for name, _, _ in listing]
    total = sum(size for _, size, _ in listing)
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
