"""Tiny random-weight models, built and saved with transformers (and sentence-transformers) by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = (
    "the a an of to and in is it that for on with as was at by be this are from or have not but what all were "
    "when we there can more if no out so said up about time would into has one two three four five six seven "
    "cat dog fox jumps over lazy quick brown red blue green city river capital france paris berlin model "
    "text vector query passage document hello world batch row rows data file long short very word"
).split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _wordpiece_vocab() -> list[str]:
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list(".,!?;:'\"-")
    return SPECIAL + chars + ["##" + c for c in chars] + WORDS


def save_bert_tokenizer(path: Path, model_max_length: int = 128) -> int:
    from transformers import BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = _wordpiece_vocab()
    tok = BertTokenizerFast(
        vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=model_max_length
    )
    tok.save_pretrained(str(path))
    return len(vocab)


def build_bert(
    path: Path,
    *,
    seed: int = 0,
    hidden: int = 32,
    max_positions: int = 128,
    extra_config: dict | None = None,
    arch: str = "BertModel",
) -> Path:
    from transformers import BertConfig, BertModel

    vocab_size = save_bert_tokenizer(path, model_max_length=max_positions)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=max_positions,
    )
    model = BertModel(config).eval()
    model.save_pretrained(str(path))
    if extra_config:
        cfg = json.loads((path / "config.json").read_text())
        cfg.update(extra_config)
        (path / "config.json").write_text(json.dumps(cfg, indent=2))
    return path


def build_qwen3(
    path: Path, *, seed: int = 0, hidden: int = 32, append_eos: bool = True, tie: bool = True, max_positions: int = 256
) -> Path:
    """A tiny Qwen3ForCausalLM whose tokenizer appends an EOS token, as Qwen3-Embedding's does (or not, as the
    Qwen3-Reranker's does not); its vocabulary has the reranker's `yes` and `no`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    vocab_list = ["<pad>", "<unk>", "<eos>"] + _wordpiece_vocab()[len(SPECIAL) :] + ["yes"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    eos = vocab["<eos>"]
    if append_eos:
        backend.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", eos)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_positions,
    )
    tok.save_pretrained(str(path))
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(vocab_list),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=hidden * 2,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        eos_token_id=eos,
        tie_word_embeddings=tie,
    )
    model = Qwen3ForCausalLM(config).eval()
    model.save_pretrained(str(path))
    return path


def build_cross_encoder(
    path: Path, *, seed: int = 0, hidden: int = 32, max_positions: int = 64, base: Path | None = None
) -> Path:
    """A one-label BERT cross-encoder: random (weights spread wide enough that scores differ), or `base`'s encoder
    weights with a seeded one-label head; saved by sentence-transformers' CrossEncoder in its current layout."""
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    raw = path.with_name(path.name + "-raw")
    torch.manual_seed(seed)
    if base is None:
        vocab_size = save_bert_tokenizer(raw, model_max_length=max_positions)
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=hidden * 2,
            max_position_embeddings=max_positions,
            num_labels=1,
            initializer_range=0.5,
        )
        model = BertForSequenceClassification(config).eval()
    else:
        model = BertForSequenceClassification.from_pretrained(str(base), num_labels=1).eval()
        with torch.no_grad():
            model.classifier.weight.normal_(0, 0.5)
            model.classifier.bias.normal_(0, 0.5)
        AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(raw))
    model.save_pretrained(str(raw))
    CrossEncoder(str(raw), device="cpu").save(str(path))
    return path


def build_st(
    path: Path,
    body: Path,
    *,
    pooling_mode: str | list[str] = "mean",
    include_prompt: bool = True,
    dense: list[tuple[int, str]] | None = None,
    normalize: bool = True,
    prompts: dict[str, str] | None = None,
    max_seq_length: int | None = None,
    seed: int = 0,
) -> Path:
    """A Sentence-Transformers model in the current (ST >= 5.4) layout, saved by the installed library."""
    from sentence_transformers import SentenceTransformer, models
    from torch import nn

    torch.manual_seed(seed)
    transformer = models.Transformer(str(body), max_seq_length=max_seq_length)
    dim = transformer.get_embedding_dimension()
    modules: list[nn.Module] = [
        transformer,
        models.Pooling(dim, pooling_mode=pooling_mode, include_prompt=include_prompt),
    ]
    width = modules[1].get_embedding_dimension()
    for out, act in dense or []:
        activation = {"tanh": nn.Tanh(), "identity": nn.Identity(), "relu": nn.ReLU()}[act]
        modules.append(models.Dense(width, out, activation_function=activation))
        width = out
    if normalize:
        modules.append(models.Normalize())
    st = SentenceTransformer(modules=modules, device="cpu", prompts=prompts or {})
    st.save(str(path))
    return path


def build_classifier(
    path: Path, *, family: str, num_labels: int, problem_type: str | None = None, seed: int = 0
) -> Path:
    """A tiny random sequence classifier (BERT or Qwen3), with named labels and an optional problem_type; weights
    spread wide enough that the classes are told apart."""
    from transformers import BertConfig, BertForSequenceClassification, Qwen3Config, Qwen3ForSequenceClassification

    labels = {i: f"class_{chr(ord('a') + i)}" for i in range(num_labels)}
    extra = {"problem_type": problem_type} if problem_type else {}
    torch.manual_seed(seed)
    model: torch.nn.Module
    if family == "bert":
        vocab_size = save_bert_tokenizer(path, model_max_length=64)
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=num_labels,
            id2label=labels,
            label2id={v: k for k, v in labels.items()},
            initializer_range=0.5,
            **extra,
        )
        model = BertForSequenceClassification(config)
    else:
        build_qwen3(path, seed=seed, append_eos=False, max_positions=64)
        config = Qwen3Config.from_pretrained(str(path))
        config.num_labels = num_labels
        config.id2label = labels
        config.label2id = {v: k for k, v in labels.items()}
        config.architectures = ["Qwen3ForSequenceClassification"]
        config.initializer_range = 0.5
        if problem_type:
            config.problem_type = problem_type
        model = Qwen3ForSequenceClassification(config)
    model.eval().save_pretrained(str(path))
    return path


NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def build_token_classifier(path: Path, *, seed: int = 0, labels: list[str] | None = None) -> Path:
    """A tiny random BertForTokenClassification with NER labels (B-/I- scheme), weights spread wide enough that
    neighbouring tokens get different labels."""
    from transformers import BertConfig, BertForTokenClassification

    names = labels or NER_LABELS
    vocab_size = save_bert_tokenizer(path, model_max_length=64)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        initializer_range=0.5,
    )
    BertForTokenClassification(config).eval().save_pretrained(str(path))
    return path


def build_qwen2_reward(path: Path, *, process: bool, seed: int = 0, hidden: int = 32) -> tuple[Path, torch.nn.Module]:
    """A tiny Qwen2 reward model as the Qwen2-Math-RM / Qwen2.5-Math-PRM checkpoints store it: a Qwen2Model body
    (`model.*`) and a `score` head Linear(h, h) -> ReLU -> Linear(h, labels) (1 label, or 2 for a process reward
    model). Returns the path and the in-memory model (body + head) the test computes its reference with."""
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    build_qwen3(path, seed=seed, append_eos=False, max_positions=64)  # for its tokenizer
    for f in path.glob("*.safetensors"):
        f.unlink()
    torch.manual_seed(seed)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        pad_token_id=0,
        initializer_range=0.3,
    )
    labels = 2 if process else 1
    config.architectures = ["Qwen2ForProcessRewardModel" if process else "Qwen2ForRewardModel"]
    config.num_labels = labels
    body = Qwen2Model(config).eval()
    head = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, labels))
    state = {f"model.{k}": v.contiguous() for k, v in body.state_dict().items()}
    state |= {f"score.{k}": v.contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(path))

    class Reference(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = body, head

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(input_ids=ids).last_hidden_state)  # type: ignore[no-any-return]

    return path, Reference().eval()


def _colbert_body(path: Path, *, extra_tokens: list[str], seed: int) -> tuple[torch.nn.Module, object]:
    """A tiny BERT and its tokenizer with ColBERT's marker tokens added (as PyLate registers them)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = _wordpiece_vocab() + ["[unused0]", "[unused1]"]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=128)
    if extra_tokens:
        tok.add_tokens(extra_tokens)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=max(tok.get_vocab().values()) + 1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.5,
    )
    return BertModel(config).eval(), tok


def build_colbert_stanford(
    path: Path, *, metadata: dict | None = None, with_projection: bool = True, dim: int = 16, seed: int = 7
) -> Path:
    """A Stanford `HF_ColBERT` checkpoint: `bert.*` body weights and a bias-free `linear.weight` in one
    safetensors file, config architectures HF_ColBERT, and `artifact.metadata` (as colbert-ai saves them)."""
    from safetensors.torch import save_file

    body, tok = _colbert_body(path, extra_tokens=[], seed=seed)
    torch.manual_seed(seed + 1)
    linear = torch.nn.Linear(32, dim, bias=False)
    state = {f"bert.{k}": v.contiguous() for k, v in body.state_dict().items()}
    if with_projection:
        state["linear.weight"] = linear.weight.detach().contiguous()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = body.config.to_dict()
    config["architectures"] = ["HF_ColBERT"]
    (path / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(str(path))  # type: ignore[attr-defined]
    if metadata is not None:
        (path / "artifact.metadata").write_text(json.dumps(metadata, indent=2))
    return path


def build_colbert_pylate(path: Path, *, settings: dict | None = None, dim: int = 16, seed: int = 11) -> Path:
    """A PyLate (Sentence-Transformers) ColBERT: the body, a bias-free `1_Dense`, and the `[Q] `/`[D] ` markers as
    added tokens, with config_sentence_transformers.json as PyLate 1.6 saves it."""
    from safetensors.torch import save_file

    body, tok = _colbert_body(path, extra_tokens=["[Q] ", "[D] "], seed=seed)
    body.save_pretrained(str(path))
    tok.save_pretrained(str(path))  # type: ignore[attr-defined]
    dense = path / "1_Dense"
    dense.mkdir()
    torch.manual_seed(seed + 1)
    weight = torch.nn.Linear(32, dim, bias=False).weight.detach().contiguous()
    save_file({"linear.weight": weight}, str(dense / "model.safetensors"))
    (dense / "config.json").write_text(
        json.dumps(
            {
                "in_features": 32,
                "out_features": dim,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
                "use_residual": False,
            }
        )
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 127, "do_lower_case": False}))
    st = {
        "model_type": "ColBERT",
        "prompts": {"query": "", "document": ""},
        "default_prompt_name": None,
        "similarity_fn_name": "MaxSim",
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "query_length": 12,
        "document_length": 20,
        "attend_to_expansion_tokens": False,
        "skiplist_words": list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
        "do_query_expansion": True,
    }
    (path / "config_sentence_transformers.json").write_text(json.dumps(st | (settings or {}), indent=2))
    return path


XLMR_WORDS = "the a of to and in is what capital france paris city river hello world cat dog m3 bge".split()


def build_bge_m3(path: Path, *, seed: int = 3, heads: bool = True) -> Path:
    """A BGE-M3 layout: a tiny XLM-RoBERTa (SentencePiece-style Unigram tokenizer in XLM-R's id order: <s>=0,
    <pad>=1, </s>=2, <unk>=3, <mask> last) with `colbert_linear.pt` (Linear(H, H)) and `sparse_linear.pt`
    (Linear(H, 1)) saved beside it with torch.save, as FlagEmbedding saves them."""
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

    path.mkdir(parents=True, exist_ok=True)
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -4.0)]
    pieces += [("\u2581" + w, -6.0) for w in XLMR_WORDS]
    pieces += [(p, -7.0) for p in ".,!?'"] + [("\u2581" + p, -7.5) for p in ".,!?'"]
    for c in "abcdefghijklmnopqrstuvwxyz":
        pieces += [(c, -9.0), ("\u2581" + c, -9.5)]
    pieces.append(("<mask>", 0.0))
    tok = XLMRobertaTokenizer(vocab=pieces, add_prefix_space=True, model_max_length=512)
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=len(pieces),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=0.5,
    )
    XLMRobertaModel(config).eval().save_pretrained(str(path))
    tok.save_pretrained(str(path))
    if heads:
        torch.manual_seed(seed + 1)
        torch.save(torch.nn.Linear(32, 32).state_dict(), str(path / "colbert_linear.pt"))
        sparse = torch.nn.Linear(32, 1)
        with torch.no_grad():
            sparse.weight.mul_(0.1)  # most tokens get a positive weight, some do not: both paths are exercised
            sparse.bias.fill_(0.1)
        torch.save(sparse.state_dict(), str(path / "sparse_linear.pt"))
    return path


def build_encoder(path: Path, *, family: str, seed: int = 0, hidden: int = 32) -> Path:
    """A tiny random encoder of another family than BERT (roberta, xlm-roberta, distilbert), with the WordPiece
    tokenizer of the tiny BERT (the backbone does not care which tokenizer made its ids)."""
    from transformers import AutoConfig, AutoModel

    vocab_size = save_bert_tokenizer(path, model_max_length=64)
    torch.manual_seed(seed)
    if family == "distilbert":
        config = AutoConfig.for_model(
            family,
            vocab_size=vocab_size,
            dim=hidden,
            n_layers=2,
            n_heads=2,
            hidden_dim=hidden * 2,
            max_position_embeddings=66,
        )
    else:
        # RoBERTa-style position ids start after padding_idx (1): two extra positions.
        config = AutoConfig.for_model(
            family,
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=hidden * 2,
            max_position_embeddings=66,
            pad_token_id=0,
        )
    AutoModel.from_config(config).eval().save_pretrained(str(path))
    return path
