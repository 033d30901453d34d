"""Loading a resolved model's weights on a device in a dtype: the model bodies the engine runs, and the weights of
the heads in `poolcli.pooler.heads` that live in the checkpoint.

`Loader` keeps what it loaded, so the Python API's `poolcli.load(...)` object serves many calls (and several
tasks) with one copy of the weights; a command-line run makes one loader and drops it at the end.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from poolcli.errors import CantCreateError, ConfigError, InternalError, PoolcliError, UsageError
from poolcli.pooler.heads import Dense, LmRowsHead, PositionScoreHead, RewardHead

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from torch import Tensor, nn

    from poolcli.config import EngineConfig
    from poolcli.model.backend import BackendChoice
    from poolcli.model.compiled import BodyOutput, CacheEntry, CompiledBody
    from poolcli.model.resolve import DenseSpec, ResolvedModel
    from poolcli.vocab import Backend, DType

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def quiet_transformers() -> None:
    """No hub traffic and no progress bars from transformers: poolcli owns stderr and never downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(threads: int | None, device: torch.device) -> int:
    """Give the model every usable core (or `threads`) and keep the tokenizer off the model's cores on CPU.

    On CPU the model is the bottleneck and tokenization is about 1% of the work (docs/performance.md), so the Rust
    tokenizer gets one thread and overlaps with the model; on a GPU the tokenizer may be the bottleneck and gets
    every core. torch's own default counts physical cores and ignores the affinity mask, which oversubscribes a
    container limited to fewer cores.
    """
    n = threads or usable_cores()
    torch.set_num_threads(n)
    # Read when the tokenizer's thread pool starts, i.e. at its first batch; a value set by the user wins.
    os.environ.setdefault("RAYON_NUM_THREADS", "1" if device.type == "cpu" else str(usable_cores()))
    return n


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available")
    return dev


def resolve_dtype(dtype: DType, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _config(model: ResolvedModel, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model.path, trust_remote_code=trust_remote_code)
    for key, value in model.hf_overrides.items():
        setattr(config, key, value)
    return config


def _files_digest(folder: Path) -> str:
    """sha256 of the files beside the weights that decide the traced graph: config.json and Python modules."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted([folder / "config.json", *folder.glob("*.py")]):
        if f.is_file():
            h.update(f"{f.name}\0".encode() + f.read_bytes() + b"\0")
    return h.hexdigest()


def _load_error(model: ResolvedModel, exc: Exception) -> ConfigError:
    return ConfigError(f"cannot load model {model.name}: {str(exc).splitlines()[0]}")


def damaged_weights(path: Path, exc: BaseException, *, model: str | None = None) -> ConfigError:
    """A weight file that cannot be read as one (junk, truncated, another format under its name): exit 78."""
    text = str(exc).strip()
    reason = f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__
    return ConfigError(
        f"{f'cannot load model {model}: ' if model else ''}the weight file {path} is damaged or not a weights file "
        f"({reason})",
        hint="re-download the model, or re-save its weights",
    )


def _weight_files(folder: Path) -> list[Path]:
    """The checkpoint files transformers reads a body from, in its order of preference."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                shards = json.loads((folder / index).read_text())["weight_map"].values()
                return [folder / name for name in sorted(set(shards))]
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return []  # transformers reports a broken index itself
    return []


def _read_fails(path: Path) -> Exception | None:
    """What reading `path` as weights raises (None when it reads): a safetensors header, or a torch checkpoint
    (memory-mapped when it is a zip archive, as torch.save writes them)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                fh.keys()
        else:
            import zipfile

            torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # safetensors and torch raise many types for a damaged or foreign file
        return exc
    return None


@contextmanager
def _loading(model: ResolvedModel) -> Iterator[None]:
    """transformers' failures to load a body as ConfigError (exit 78): a weight file that does not read is named
    (transformers' own error may be a SafetensorError, an unpickling KeyError or an EOF that names nothing);
    its other OSError/ValueError/KeyError (a config it cannot honour) are reported as they are; anything else is
    not a load failure and goes on as it is."""
    try:
        yield
    except PoolcliError:
        raise
    except Exception as exc:
        for path in _weight_files(Path(model.path)):
            failure = _read_fails(path) if path.is_file() else None
            if failure is not None:
                raise damaged_weights(path, failure, model=model.name) from None
        if isinstance(exc, (OSError, ValueError, KeyError)):
            raise _load_error(model, exc) from None
        raise


class Compilation:
    """How a body is run when its backend is not torch: the choice, the threads it may use, and where its notes
    and conversion time go (one per Loader)."""

    def __init__(self, choice: BackendChoice, threads: int, notes: list[tuple[str, str]]) -> None:
        self.choice = choice
        self.threads = threads
        self.notes = notes
        self.convert_seconds = 0.0

    def note(self, text: str) -> None:
        self.notes.append(("info", text))

    def entry(
        self, model: ResolvedModel, module: str, names: Sequence[str], output: BodyOutput, **extra: Any
    ) -> CacheEntry:
        import transformers

        from poolcli.model.compiled import CacheEntry
        from poolcli.model.identity import weights_digest

        entry: CacheEntry = CacheEntry(
            {
                "weights": weights_digest(Path(model.path)),
                # The graph is traced from the config (activation, layer norm eps, ...) and any remote code.
                "files": _files_digest(Path(model.path)),
                "hf_overrides": model.hf_overrides,
                "module": module,
                "inputs": list(names),
                "output": output,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                **extra,
            }
        )
        return entry

    def compile(
        self, entry: CacheEntry, make: Callable[[], nn.Module], names: Sequence[str], output: BodyOutput
    ) -> CompiledBody:
        """The compiled body. A failure stops the run even under `auto`: the run's identity (fixed before loading,
        so a finished output reruns without touching the model) already says OpenVINO, and an output must not mix
        backends; `auto` avoids what it can foresee (an unchecked architecture, an unwritable cache) up front."""
        from poolcli.model.compiled import compile_body

        try:
            body, seconds = compile_body(
                entry,
                make,
                names,
                output,
                precision=self.choice.precision,
                threads=self.threads,
                note=self.note,
            )
        except (ConfigError, CantCreateError) as exc:
            if self.choice.auto and exc.hint is None:
                exc.hint = "--backend torch runs it without OpenVINO"
            raise
        self.convert_seconds += seconds
        return body


class HiddenStateModel:
    """The model body: padded ids -> last hidden states [B, L, H]."""

    def __init__(
        self,
        model: ResolvedModel,
        *,
        device: torch.device,
        dtype: torch.dtype,
        trust_remote_code: bool,
        compilation: Compilation | None = None,
    ):
        quiet_transformers()
        self.device = device
        self.dtype = dtype
        self.compiled: CompiledBody | None = None
        self.entry: CacheEntry | None = None
        """The cache entry of the compiled float32 body (what int8 quantization starts from)."""
        self.model: Any = None
        names = ("input_ids", "attention_mask")

        def load(load_dtype: torch.dtype) -> Any:
            from transformers import AutoModel

            with _loading(model):
                loaded = AutoModel.from_pretrained(
                    model.path,
                    config=_config(model, trust_remote_code),
                    dtype=load_dtype,
                    trust_remote_code=trust_remote_code,
                )
            return loaded.eval()

        if compilation is not None:
            entry = compilation.entry(model, "AutoModel", names, "hidden")
            self.compiled = compilation.compile(entry, lambda: load(torch.float32), names, "hidden")
            self.entry = entry
        else:
            self.model = load(dtype).to(device)

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if self.compiled is not None:
            return self.compiled({"input_ids": input_ids, "attention_mask": attention_mask})
        out = self.model(
            input_ids=input_ids.to(self.device, non_blocking=True),
            attention_mask=attention_mask.to(self.device, non_blocking=True),
        )
        hidden: Tensor = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden


class LogitsModel:
    """A model with a classifier head: padded ids -> float32 logits, [B, num_labels] per row or, with `per_token`,
    [B, L, num_labels] per position.

    Sequence- and token-classification checkpoints run through transformers' own classes, so every architectural
    layer of the head (BERT's tanh pooler, RoBERTa's dense + out_proj, a decoder's last-token `score`) runs exactly
    as in transformers. Three heads (`poolcli.pooler.heads`) run on the model body instead: a causal LM converted
    with `classifier_from_token` (or asked for `returned_token_ids` under STEP pooling) multiplies hidden states by
    the chosen rows of the LM head (`LmRowsHead`); a reward model applies its own head (`RewardHead`); and a
    decoder's sequence classifier applies its `score` layer to every position for per-token logits
    (`PositionScoreHead`).
    """

    def __init__(
        self,
        model: ResolvedModel,
        *,
        device: torch.device,
        dtype: torch.dtype,
        trust_remote_code: bool,
        pad_id: int,
        per_token: bool = False,
        lm_rows: Sequence[int] | None = None,
        compilation: Compilation | None = None,
    ) -> None:
        quiet_transformers()
        from transformers import AutoModel, AutoModelForSequenceClassification

        info = model.classifier
        if info is None and lm_rows is None:
            raise ConfigError(f"{model.name} has no classifier head")
        self.device = device
        self.dtype = dtype
        # A compiled body is converted from the float32 weights; its precision is chosen when it is compiled.
        dtype = torch.float32 if compilation is not None else dtype
        self.per_token = per_token
        self.compiled: CompiledBody | None = None
        # Set when the model body runs alone and this head turns its hidden states into logits.
        self.head: nn.Module | None = None
        with _loading(model):
            config = _config(model, trust_remote_code)
            if model.is_decoder and getattr(config, "pad_token_id", None) is None:
                # transformers finds a decoder's last real token by the pad id; rows are padded with ours.
                config.pad_token_id = pad_id
            body_only = lm_rows is not None or (info is not None and info.head in ("from_token", "reward"))
            if body_only:
                self.model = AutoModel.from_pretrained(
                    model.path, config=config, dtype=dtype, trust_remote_code=trust_remote_code
                )
                if lm_rows is not None or (info is not None and info.head == "from_token"):
                    self.head = LmRowsHead(lm_head_rows(self.model, model, config, lm_rows))
                else:
                    self.head = reward_head(Path(model.path))
                # Remote code may map AutoModel to the reward class itself (InternLM2, Qwen2.5-Math-PRM): its
                # output would be rewards, not hidden states, so run its body.
                base = getattr(self.model, "base_model", self.model)
                if base is not self.model:
                    self.model = base
            else:
                assert info is not None
                from transformers import AutoModelForTokenClassification

                auto: Any = (
                    AutoModelForTokenClassification
                    if per_token and info.head == "token"
                    else AutoModelForSequenceClassification
                )
                self.model, loading = auto.from_pretrained(
                    model.path,
                    config=config,
                    dtype=dtype,
                    trust_remote_code=trust_remote_code,
                    output_loading_info=True,
                )
                missing = list(loading.get("missing_keys") or [])
                if missing:
                    # A head initialised at random would give confident nonsense: refuse instead.
                    raise ConfigError(
                        f"{model.name}: the checkpoint has no classifier weights ({', '.join(sorted(missing)[:3])} "
                        "missing)",
                        hint="a generative checkpoint needs classifier_from_token (e.g. --config qwen3-reranker)",
                    )
                if per_token and info.head == "sequence":
                    score = getattr(self.model, "score", None)
                    if score is None:
                        raise ConfigError(f"{model.name}: its classifier has no per-position `score` layer")
                    self.head = PositionScoreHead(score)
                    self.model = self.model.base_model
        self.model.eval().to(device)
        if self.head is not None:
            self.head.eval().to(device)
        if compilation is not None:
            import inspect

            module = self.model
            names: tuple[str, ...] = ("input_ids", "attention_mask")
            if "token_type_ids" in inspect.signature(module.forward).parameters:
                names += ("token_type_ids",)
            output: BodyOutput = "logits" if self.head is None else "hidden"
            entry = compilation.entry(model, type(module).__name__, names, output, pad_id=pad_id)
            self.compiled = compilation.compile(entry, lambda: module, names, output)
            self.model = None  # the compiled body holds its own copy of the weights

    def logits(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        kwargs = {
            "input_ids": input_ids.to(self.device, non_blocking=True),
            "attention_mask": attention_mask.to(self.device, non_blocking=True),
        }
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids.to(self.device, non_blocking=True)
        if self.compiled is not None:
            if "token_type_ids" in self.compiled.names and token_type_ids is None:
                kwargs["token_type_ids"] = torch.zeros_like(kwargs["input_ids"])
            result = self.compiled(kwargs)
            if self.head is None:
                return result
            out: Any = (result,)
        else:
            out = self.model(**kwargs)
        if self.head is None:
            logits: Tensor = out.logits
            return logits.float()
        hidden: Tensor = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if self.per_token:
            per_position: Tensor = self.head(hidden)
            return per_position
        mask = kwargs["attention_mask"]
        last = mask.sum(dim=1) - 1  # rows are right-padded
        pooled: Tensor = self.head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        return pooled


def lm_head_rows(body: Any, model: ResolvedModel, config: Any, lm_rows: Sequence[int] | None) -> Tensor:
    """[labels, hidden] float32 from the LM head rows of the classifier tokens (vLLM section 7), or of `lm_rows`
    (token ids) when given; tied embeddings are read from the loaded body, untied rows from the checkpoint."""
    from transformers import AutoTokenizer

    info = model.classifier
    from_token = info.from_token if info is not None else None
    if lm_rows is not None:
        ids = list(lm_rows)
        vocab = int(body.get_input_embeddings().weight.shape[0])
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ConfigError(f"returned_token_ids {bad} are outside the vocabulary (0..{vocab - 1})")
    else:
        assert from_token is not None
        tok = AutoTokenizer.from_pretrained(model.path)
        ids = []
        for t in from_token.tokens:
            i = tok.convert_tokens_to_ids(t)
            if not isinstance(i, int) or i == tok.unk_token_id:
                raise ConfigError(f"classifier_from_token: the tokenizer has no token {t!r}")
            ids.append(i)
    text_config = getattr(config, "text_config", None) or config
    rows: Tensor
    if getattr(text_config, "tie_word_embeddings", False):
        rows = body.get_input_embeddings().weight[ids].detach().float()
    else:
        rows = _read_rows(Path(model.path), "lm_head.weight", ids)
    if lm_rows is None and from_token is not None and from_token.method == "from_2_way_softmax":
        rows = (rows[1] - rows[0]).unsqueeze(0)
    return rows


def reward_head(folder: Path) -> RewardHead:
    """A reward model's head with the weights of its checkpoint (layer names and shapes from the resolution)."""
    from safetensors import safe_open
    from torch import nn

    from poolcli.model.resolve import reward_head_layers

    linears: list[nn.Linear] = []
    for name, (out_f, in_f) in reward_head_layers(folder):
        bias_name = name.removesuffix("weight") + "bias"
        tensors: dict[str, Tensor] = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as fh:
                for key in (name, bias_name):
                    if key in fh.keys():  # noqa: SIM118 - safe_open handles have keys(), not __contains__
                        tensors[key] = fh.get_tensor(key)
        linear = nn.Linear(in_f, out_f, bias=bias_name in tensors)
        linear.weight.data = tensors[name].float()
        if bias_name in tensors:
            linear.bias.data = tensors[bias_name].float()
        linears.append(linear)
    return RewardHead(linears)


def _read_rows(folder: Path, name: str, rows: list[int]) -> Tensor:
    """Selected rows of one weight from the checkpoint's safetensors files, without loading the whole tensor."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = [folder / json.loads(index.read_text())["weight_map"][name]]
    else:
        files = [folder / "model.safetensors"]
    for f in files:
        if f.is_file():
            with safe_open(str(f), framework="pt") as fh:
                if name in fh.keys():  # noqa: SIM118 - safe_open handles have keys(), not __contains__
                    part = fh.get_slice(name)
                    return torch.stack([part[r] for r in rows]).float()
    raise ConfigError(f"{folder}: no {name} in the safetensors files (needed for classifier_from_token)")


def load_projector(root: Path, specs: Sequence[DenseSpec]) -> nn.Module | None:
    """The Sentence-Transformers Dense stack in float32, weights read from each module's folder."""
    if not specs:
        return None
    from torch import nn

    layers: list[nn.Module] = []
    for spec in specs:
        dense = Dense(
            spec.in_features,
            spec.out_features,
            bias=spec.bias,
            activation=spec.activation,
            use_residual=spec.use_residual,
        )
        state = _read_state(root / spec.path)
        mapped: dict[str, Tensor] = {}
        for key, value in state.items():
            name = key.split(".", 1)[1] if key.startswith(("linear.", "dense.")) else key
            if name in ("weight", "bias"):
                mapped[f"linear.{name}"] = value
            elif key.startswith("residual."):
                mapped[key] = value
        missing, _ = dense.load_state_dict(mapped, strict=False)
        if missing:
            raise ConfigError(f"{root / spec.path}: Dense weights lack {', '.join(missing)}")
        layers.append(dense.float().eval().requires_grad_(False))
    return nn.Sequential(*layers)


def _read_state(folder: Path) -> dict[str, Tensor]:
    st = folder / "model.safetensors"
    pt = folder / "pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return load_file(str(st))
        if pt.is_file():
            state: dict[str, Tensor] = torch.load(str(pt), map_location="cpu", weights_only=True)
            return state
    except Exception as exc:  # safetensors and torch raise many types for a damaged or foreign file
        raise damaged_weights(st if st.is_file() else pt, exc) from None
    raise ConfigError(f"{folder}: no model.safetensors or pytorch_model.bin for the Dense module")


class Loader:
    """One resolved model on one device: loads each body or head the engines ask for once, and keeps it.

    `dtype` is the compute dtype of the bodies; a float32 twin is loaded only when a task recomputes a non-finite
    row in float32 and the run's dtype is lower."""

    def __init__(
        self,
        model: ResolvedModel,
        *,
        device: str,
        dtype: DType,
        trust_remote_code: bool,
        backend: Backend = "torch",
        threads: int | None = None,
        dry_run: bool = False,
    ) -> None:

        self.model = model
        self.trust_remote_code = trust_remote_code
        self.dry_run = dry_run
        """Decide the device, dtype and backend only: nothing is created (the compiled-model cache is probed, not
        made) and nothing may be loaded."""
        self._requested = (dtype, backend, threads)
        self._cache: dict[tuple[Any, ...], Any] = {}
        self.notes: list[tuple[str, str]] = []
        self.retarget(resolve_device(device))

    def retarget(self, device: torch.device) -> None:
        """Decide dtype and backend for `device` (the Ray driver decides for where its actors compute, which may be
        a device this machine lacks); nothing may have been loaded yet."""
        from poolcli.model.backend import choose_backend, openvino_installed
        from poolcli.model.compiled import cache_writable
        from poolcli.model.cpu import cpu_flags

        assert not self._cache, "retarget before loading"
        dtype, backend, threads = self._requested
        self.device = device
        wanted = resolve_dtype(dtype, device)
        self.backend = choose_backend(
            backend,
            device_type=device.type,
            dtype=wanted,
            model_type=self.model.model_type,
            trust_remote_code=self.trust_remote_code,
            flags=cpu_flags(),
            installed=openvino_installed(),
            cache_writable=(lambda: cache_writable(create=False)) if self.dry_run else cache_writable,
        )
        compiled = self.backend.name != "torch"
        # What the body computes in: a compiled body falls back to float32 where the CPU lacks native bf16.
        self.dtype = wanted
        if compiled:
            self.dtype = torch.bfloat16 if self.backend.precision == "bf16" else torch.float32
        self.notes[:] = list(self.backend.notes)
        self._compilation = Compilation(self.backend, threads or usable_cores(), self.notes) if compiled else None

    @classmethod
    def from_config(cls, model: ResolvedModel, config: EngineConfig, *, dry_run: bool = False) -> Loader:
        """The loader a run's engine settings describe (the file run's, the Python API's, each Ray actor's, and a
        dry run's, which decides but creates and loads nothing)."""
        return cls(
            model,
            device=config.device,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
            backend=config.backend,
            threads=config.threads,
            dry_run=dry_run,
        )

    @property
    def convert_seconds(self) -> float:
        """Seconds spent converting bodies for the compiled backend (0 when every body came from the cache)."""
        return self._compilation.convert_seconds if self._compilation is not None else 0.0

    def quantize(self, samples: Sequence[Sequence[Any]], calibration: str) -> None:
        """Replace every loaded compiled body by its int8 version, calibrated with `samples` (`calibration`: their
        digest, part of the cache key)."""
        from poolcli.model.compiled import CacheEntry, nncf_version, quantize_body

        compilation = self._compilation
        bodies = [m for m in self._cache.values() if isinstance(m, HiddenStateModel) and m.entry is not None]
        if compilation is None or not bodies:
            raise UsageError("--quantize int8 needs the OpenVINO backend, and this model runs with torch")
        for body in bodies:
            assert body.entry is not None and body.compiled is not None
            parts = {k: v for k, v in body.entry.key_parts.items() if k not in ("format", "openvino")}
            entry = CacheEntry({**parts, "quantize": "int8", "calibration": calibration, "nncf": nncf_version()})
            body.compiled, seconds = quantize_body(
                body.entry, entry, samples, body.compiled.names, threads=compilation.threads, note=compilation.note
            )
            compilation.convert_seconds += seconds

    def take_notes(self) -> list[tuple[str, str]]:
        """Notes on the backend since the last call: ("info" | "warn", text)."""
        notes = list(self.notes)
        self.notes.clear()
        return notes

    def _compiled_for(self, dtype: torch.dtype) -> Compilation | None:
        """The compilation for a body in `dtype`: a float32 twin of a bf16 compiled body is compiled in f32."""
        if self._compilation is None or dtype == self.dtype:
            return self._compilation
        from poolcli.model.backend import BackendChoice

        twin = BackendChoice(self.backend.name, "f32", self.backend.auto)
        return Compilation(twin, self._compilation.threads, self.notes)

    def _get(self, key: tuple[Any, ...], make: Any) -> Any:
        if self.dry_run:
            raise InternalError("a dry run's loader loads nothing")
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def hidden_state_model(self, *, float32: bool = False) -> HiddenStateModel:
        dtype = torch.float32 if float32 else self.dtype
        made: HiddenStateModel = self._get(
            ("hidden", dtype),
            lambda: HiddenStateModel(
                self.model,
                device=self.device,
                dtype=dtype,
                trust_remote_code=self.trust_remote_code,
                compilation=self._compiled_for(dtype),
            ),
        )
        return made

    def logits_model(
        self, *, pad_id: int, per_token: bool = False, lm_rows: Sequence[int] | None = None, float32: bool = False
    ) -> LogitsModel:
        dtype = torch.float32 if float32 else self.dtype
        rows = tuple(lm_rows) if lm_rows is not None else None
        made: LogitsModel = self._get(
            ("logits", dtype, pad_id, per_token, rows),
            lambda: LogitsModel(
                self.model,
                device=self.device,
                dtype=dtype,
                trust_remote_code=self.trust_remote_code,
                pad_id=pad_id,
                per_token=per_token,
                lm_rows=rows,
                compilation=self._compiled_for(dtype),
            ),
        )
        return made

    def projector(self) -> nn.Module | None:
        """The Sentence-Transformers Dense stack (float32), applied to pooled vectors or to every token."""

        def make() -> nn.Module | None:
            projector = load_projector(Path(self.model.root), self.model.dense)
            return projector.to(self.device) if projector is not None else None

        made: nn.Module | None = self._get(("projector",), make)
        return made

    def token_projector(self) -> nn.Module | None:
        """What turns every token's hidden state into its vector: a ColBERT checkpoint's bias-free `linear`, BGE-M3's
        `colbert_linear`, else the Sentence-Transformers Dense stack (PyLate's projection is one)."""
        model = self.model
        if model.colbert is not None and model.colbert.projection is not None:
            name = model.colbert.projection

            def stanford() -> nn.Module:
                weight = read_tensor(Path(model.path), name)
                return _linear(weight, None).to(self.device)

            made: nn.Module = self._get(("token_projector",), stanford)
            return made
        if model.bge_m3 is not None:
            path = model.bge_m3.colbert_path
            expected = model.bge_m3.colbert_dim

            def bge_m3() -> nn.Module:
                weight, bias = _pt_linear(path, model.hidden_size, expected)
                return _linear(weight, bias).to(self.device)

            made = self._get(("token_projector",), bge_m3)
            return made
        return self.projector()

    def sparse_head(self) -> nn.Module:
        """BGE-M3's `sparse_linear` (Linear(H, 1) with bias), float32; the lexical head applies the ReLU."""
        assert self.model.bge_m3 is not None
        path = self.model.bge_m3.sparse_path

        def make() -> nn.Module:
            weight, bias = _pt_linear(path, self.model.hidden_size, 1)
            return _linear(weight, bias).to(self.device)

        made: nn.Module = self._get(("sparse_head",), make)
        return made


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Module:
    """A float32 projection with these weights (Identity activation, as ColBERT's and BGE-M3's are)."""
    dense = Dense(int(weight.shape[1]), int(weight.shape[0]), bias=bias is not None, activation="identity")
    state = {"linear.weight": weight.float()}
    if bias is not None:
        state["linear.bias"] = bias.float()
    dense.load_state_dict(state)
    return dense.float().eval().requires_grad_(False)


def read_tensor(folder: Path, name: str) -> Tensor:
    """One tensor of the checkpoint's safetensors files (e.g. a ColBERT projection), without loading the rest."""
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            if name in fh.keys():  # noqa: SIM118 - safe_open handles have keys(), not __contains__
                tensor: Tensor = fh.get_tensor(name)
                return tensor
    raise ConfigError(f"{folder}: no {name} in the safetensors files")


def _pt_linear(path: str, in_features: int, out_features: int) -> tuple[Tensor, Tensor | None]:
    """A Linear layer saved with torch.save(state_dict) as FlagEmbedding saves BGE-M3's heads."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise ConfigError(f"{path}: cannot read it ({str(exc).splitlines()[0]})") from None
    weight = state.get("weight") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (out_features, in_features):
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
        raise ConfigError(f"{path}: expected a Linear({in_features}, {out_features}) state dict, got weight {shape}")
    bias = state.get("bias")
    return weight, bias if isinstance(bias, torch.Tensor) else None
