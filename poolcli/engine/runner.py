"""The model runner: loads the weights on a device in a dtype and turns token ids into hidden states."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from poolcli.errors import ConfigError, UsageError
from poolcli.pooler.heads import Dense

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor, nn

    from poolcli.engine.resolve import DenseSpec, ResolvedModel
    from poolcli.vocab import DType

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def quiet_transformers() -> None:
    """No hub traffic and no progress bars from transformers: poolcli owns stderr and never downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available")
    return dev


def resolve_dtype(dtype: DType, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class ModelRunner:
    """Owns the model body; `hidden_states` runs one padded batch under inference mode."""

    def __init__(self, model: ResolvedModel, *, device: str, dtype: DType, trust_remote_code: bool) -> None:
        quiet_transformers()
        from transformers import AutoConfig, AutoModel

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            config = AutoConfig.from_pretrained(model.path, trust_remote_code=trust_remote_code)
            for key, value in model.hf_overrides.items():
                setattr(config, key, value)
            self.model = AutoModel.from_pretrained(
                model.path, config=config, dtype=self.dtype, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot load model {model.name}: {str(exc).splitlines()[0]}") from None
        self.model.eval().to(self.device)

    @torch.inference_mode()
    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.model(
            input_ids=input_ids.to(self.device, non_blocking=True),
            attention_mask=attention_mask.to(self.device, non_blocking=True),
        )
        hidden: Tensor = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden


def collate(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad rows to the longest one: (input_ids, attention_mask) as int64 [B, L]."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row)
        ids[i, :n] = torch.as_tensor(row, dtype=torch.long)
        mask[i, :n] = 1
    return ids, mask


def load_projector(root: Path, specs: Sequence[DenseSpec]) -> nn.Module | None:
    """The Sentence-Transformers Dense stack in float32, weights read from each module's folder."""
    if not specs:
        return None
    from torch import nn

    layers: list[nn.Module] = []
    for spec in specs:
        dense = Dense(spec)
        state = _read_state(root / spec.path)
        mapped: dict[str, Tensor] = {}
        for key, value in state.items():
            name = key.split(".", 1)[1] if key.startswith(("linear.", "dense.")) else key
            if name in ("weight", "bias"):
                mapped[f"linear.{name}"] = value
            elif key.startswith("residual."):
                mapped[key] = value
        missing, unexpected = dense.load_state_dict(mapped, strict=False)
        if missing:
            raise ConfigError(f"{root / spec.path}: Dense weights lack {', '.join(missing)}")
        layers.append(dense.float().eval().requires_grad_(False))
    return nn.Sequential(*layers)


def _read_state(folder: Path) -> dict[str, Tensor]:
    st = folder / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    pt = folder / "pytorch_model.bin"
    if pt.is_file():
        state: dict[str, Tensor] = torch.load(str(pt), map_location="cpu", weights_only=True)
        return state
    raise ConfigError(f"{folder}: no model.safetensors or pytorch_model.bin for the Dense module")
