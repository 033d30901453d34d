"""The model body compiled by OpenVINO: padded ids -> hidden states or logits, in place of eager torch on CPU.

Only the body moves: heads, pooling and everything after stay float32 torch. A body is converted once (TorchScript
tracing of the transformers module, weights kept in float32) and saved in the cache under a key made of everything
that decides the converted graph: the weights' digest, the config overrides, the module and its inputs, and the
versions of poolcli's conversion, OpenVINO, torch and transformers. An entry is built in a private directory and
renamed into place, so concurrent runs never see half of one; it records a digest of its files, and an entry that
fails the check (a partial copy, a damaged disk) is moved aside and rebuilt.

Precision is chosen when the saved graph is compiled, not stored in it: `f32` computes exactly what torch float32
computes (within float rounding), `bf16` uses the CPU's native bf16 units where it has them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from poolcli.errors import CantCreateError, ConfigError, UsageError
from poolcli.io.writers import fsync_dir
from poolcli.model.identity import fingerprint

if TYPE_CHECKING:
    from torch import Tensor, nn

CACHE_ENV = "POOLCLI_CACHE_DIR"
FORMAT = 1
"""Bumped whenever what a cache entry holds or how it is converted changes: old entries are then never read."""

Precision = Literal["f32", "bf16"]
BodyOutput = Literal["hidden", "logits"]

_FULL_HASH_LIMIT = 2 << 30
_SAMPLE = 8 << 20


def cache_root() -> Path:
    """Where converted models live: $POOLCLI_CACHE_DIR, else $XDG_CACHE_HOME/poolcli, else ~/.cache/poolcli."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "poolcli"


def cache_writable(*, create: bool = True) -> bool:
    """Whether a converted body could be saved (`auto` keeps torch where it could not, decided before the run's
    identity is fixed). `create=False` (a dry run): the same answer without creating the cache directory."""
    if not create:
        from poolcli.io.safety import probe_dir

        return probe_dir(CacheEntry({}).dir) is None
    try:
        CacheEntry({}).make_dir()
    except CantCreateError:
        return False
    return True


def openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.__version__)


class _Body(torch.nn.Module):
    """The transformers module as a function of tensors only (what tracing needs): positional ids, mask and,
    when the tokenizer makes them, token type ids -> one float32 tensor."""

    def __init__(self, model: nn.Module, names: Sequence[str], output: BodyOutput) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)
        self.output = output
        config = getattr(model, "config", None)
        # A decoder would otherwise build a key/value cache whose empty concatenation does not convert.
        self.extra = {"use_cache": False} if getattr(config, "use_cache", None) is not None else {}

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, **self.extra}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(**kwargs)
        if self.output == "logits":
            logits: Tensor = out.logits
            return logits.float()
        hidden: Tensor = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden.float()


def _example(names: Sequence[str], vocab_size: int) -> tuple[Tensor, ...]:
    """Two rows, the second padded, so that tracing records the masked path every real batch takes."""
    ids = (torch.arange(16, dtype=torch.long).reshape(2, 8) % max(vocab_size - 1, 1)) + 1
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return tuple(tensors[n] for n in names)


def convert(model: nn.Module, names: Sequence[str], output: BodyOutput) -> Any:
    """A transformers module -> an OpenVINO model with dynamic batch and length."""
    import openvino as ov

    body = _Body(model, names, output).eval()
    config = getattr(model, "config", None)
    vocab = int(getattr(getattr(config, "text_config", None) or config, "vocab_size", 2) or 2)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # Tracing warns about every Python branch it freezes; the parity tests check the frozen graph instead.
        warnings.simplefilter("ignore")
        return ov.convert_model(body, example_input=_example(names, vocab))


class CompiledBody:
    """An OpenVINO compiled body: called with the tensors of a batch (on CPU), returns a float32 torch tensor."""

    def __init__(self, compiled: Any, names: Sequence[str]) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self.names = tuple(names)

    def __call__(self, inputs: dict[str, Tensor]) -> Tensor:
        feed = [inputs[n].to("cpu").to(torch.long).numpy() for n in self.names]
        result = self._request.infer(feed, share_inputs=True, share_outputs=False)
        return torch.from_numpy(next(iter(result.values())))


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(f"{size}\0".encode())
    with open(path, "rb") as fh:
        if size <= _FULL_HASH_LIMIT:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        else:  # a multi-GB entry: size plus head and tail still catch truncation and re-saves
            h.update(fh.read(_SAMPLE))
            fh.seek(size - _SAMPLE)
            h.update(fh.read(_SAMPLE))
    return h.hexdigest()


def _valid(entry: Path) -> bool:
    try:
        meta = json.loads((entry / "entry.json").read_text())
        files: dict[str, str] = meta["files"]
        return bool(files) and all(_file_digest(entry / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


class CacheEntry:
    """One converted model in the cache: found and checked, or built and published atomically."""

    def __init__(self, key_parts: dict[str, Any], *, kind: str = "openvino") -> None:
        self.key_parts = {"format": FORMAT, "openvino": openvino_version(), **key_parts}
        self.key = fingerprint(self.key_parts)
        self.dir = cache_root() / kind
        self.path = self.dir / self.key

    def ready(self, note: Callable[[str], None]) -> bool:
        """The entry exists and its files are intact; a damaged one is moved aside (and removed)."""
        if not self.path.exists():
            return False
        if _valid(self.path):
            return True
        note(f"compiled model cache entry {self.path} is damaged or incomplete: rebuilding it")
        self._discard(self.path)
        return False

    def make_dir(self) -> None:
        """The cache directory, ready to publish into (checked before a conversion spends its seconds)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".tmp-probe-{os.getpid()}-{uuid.uuid4().hex}"
            probe.mkdir()
            probe.rmdir()
            self._sweep()
        except OSError as exc:
            raise self._cant(exc) from None

    def _cant(self, exc: OSError) -> CantCreateError:
        return CantCreateError(
            f"cannot write the compiled-model cache in {self.dir}: {exc.strerror or exc}",
            hint=f"set {CACHE_ENV} to a writable directory, or use --backend torch",
        )

    def _sweep(self, older_than: float = 86400.0) -> None:
        """Private directories left by runs killed while building (a day old: no live build takes that long)."""
        now = time.time()
        for p in self.dir.iterdir():
            try:
                if p.name.startswith((".tmp-", ".trash-")) and now - p.stat().st_mtime > older_than:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                continue

    def _discard(self, path: Path) -> None:
        trash = self.dir / f".trash-{self.key}-{uuid.uuid4().hex}"
        try:
            path.rename(trash)
        except OSError:
            return  # gone already (another run discarded or replaced it)
        if _valid(trash):
            # Another run published a good entry between our check and the rename: put it back (if the place is
            # still free; otherwise a third run's entry is there and ours goes).
            with contextlib.suppress(OSError):
                trash.rename(path)
                return
        shutil.rmtree(trash, ignore_errors=True)

    def publish(self, save: Callable[[Path], None]) -> None:
        """`save(dir)` writes the entry's files into a private directory, which is then renamed into place; a run
        that loses the race to a concurrent one keeps the winner's entry."""
        self.make_dir()
        try:
            tmp = self.dir / f".tmp-{self.key}-{os.getpid()}-{uuid.uuid4().hex}"
            tmp.mkdir()
        except OSError as exc:
            raise self._cant(exc) from None
        try:
            try:
                save(tmp)
            except RuntimeError as exc:  # OpenVINO reports a failed write (disk full, EIO) as RuntimeError
                raise self._cant(OSError(str(exc).strip().splitlines()[0][:200])) from None
            files = {p.name: _file_digest(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            meta = {"files": files, "key": self.key_parts, "created": time.time()}
            (tmp / "entry.json").write_text(json.dumps(meta, indent=1, default=str))
            for p in tmp.iterdir():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(tmp)
            if self.path.exists() and not _valid(self.path):
                self._discard(self.path)
            try:
                tmp.rename(self.path)
            except OSError:
                if not _valid(self.path):
                    raise
            else:
                fsync_dir(self.dir)
        except OSError as exc:
            raise self._cant(exc) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def compile_body(
    entry: CacheEntry,
    make_module: Callable[[], nn.Module],
    names: Sequence[str],
    output: BodyOutput,
    *,
    precision: Precision,
    threads: int,
    note: Callable[[str], None],
) -> tuple[CompiledBody, float]:
    """The cached body compiled for this CPU (converting it first if the cache lacks it); also the seconds spent
    converting (0 on a cache hit)."""
    import openvino as ov

    converted = 0.0
    if not entry.ready(note):
        entry.make_dir()
        started = time.monotonic()
        module = make_module()
        try:
            model = convert(module, names, output)
        except Exception as exc:  # the converter raises many types, all meaning "this graph does not convert"
            raise ConfigError(f"OpenVINO cannot convert this model: {str(exc).strip().splitlines()[0][:300]}") from exc

        def save(folder: Path) -> None:
            # compress_to_fp16 would round the weights: the float32 default must stay exact.
            ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)

        entry.publish(save)
        converted = time.monotonic() - started
        note(f"converted the model body for OpenVINO in {converted:.1f} s (cached in {entry.path})")
    compiled = _compile(entry, {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads})
    return CompiledBody(compiled, names), converted


def _compile(entry: CacheEntry, config: dict[str, Any]) -> Any:
    import openvino as ov

    try:
        return ov.Core().compile_model(str(entry.path / "model.xml"), "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
    except RuntimeError as exc:  # e.g. the entry vanished or changed after it was checked
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"OpenVINO cannot compile the cached model {entry.path}: {first}",
            hint=f"remove {entry.path} and rerun, or use --backend torch",
        ) from None


def quantize_body(
    source: CacheEntry,
    entry: CacheEntry,
    samples: Sequence[Sequence[Any]],
    names: Sequence[str],
    *,
    threads: int,
    note: Callable[[str], None],
) -> tuple[CompiledBody, float]:
    """The float32 body of `source` quantized to int8 with `samples` (one list of input arrays per sample), cached
    under `entry`; also the seconds spent quantizing (0 on a cache hit)."""
    import openvino as ov

    try:
        import nncf
    except ImportError:
        raise UsageError("--quantize int8 needs NNCF: pip install 'poolcli[openvino]'") from None
    seconds = 0.0
    if not entry.ready(note):
        entry.make_dir()
        started = time.monotonic()
        model = ov.Core().read_model(str(source.path / "model.xml"))
        logging.getLogger("nncf").setLevel(logging.ERROR)
        # NNCF draws progress bars on stdout, which may be the run's JSONL output.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = nncf.quantize(
                model,
                nncf.Dataset(list(samples)),
                model_type=nncf.ModelType.TRANSFORMER,
                preset=nncf.QuantizationPreset.MIXED,
                subset_size=len(samples),
            )

        def save(folder: Path) -> None:
            ov.save_model(quantized, str(folder / "model.xml"), compress_to_fp16=False)

        entry.publish(save)
        seconds = time.monotonic() - started
        note(f"quantized the model body to int8 in {seconds:.1f} s (cached in {entry.path})")
    compiled = _compile(entry, {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
    return CompiledBody(compiled, names), seconds


def nncf_version() -> str | None:
    try:
        import nncf
    except ImportError:
        return None
    return str(nncf.__version__)
