"""What a checkpoint holds, read from the safetensors headers without torch or the weights themselves."""

from __future__ import annotations

import json
from pathlib import Path


def safetensors_shapes(folder: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from the safetensors headers (8-byte length + JSON), without reading any weights."""
    files = sorted(folder.glob("*.safetensors"))
    shapes: dict[str, list[int]] = {}
    for f in files:
        with open(f, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        shapes.update({k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    return shapes
