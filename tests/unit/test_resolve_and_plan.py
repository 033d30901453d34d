"""Model resolution from files on disk, and the precedence order of pooling settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from poolcli.config import PlanOptions, PoolerConfig, Preset, parse_pooler_config
from poolcli.engine.plan import build_plan
from poolcli.errors import ConfigError, NoInputError, UsageError
from poolcli.model.resolve import parse_st_pooling, resolve_model


def _model_dir(tmp_path: Path, config: dict, files: dict[str, object] | None = None) -> Path:
    d = tmp_path / "m"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config))
    for name, content in (files or {}).items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(content))
    return d


BERT = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 8, "max_position_embeddings": 512}


def _run(**kwargs: object) -> PlanOptions:
    return PlanOptions(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "modes", "include"),
    [
        (
            {"word_embedding_dimension": 8, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False},
            ("mean",),
            True,
        ),
        (
            {"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": True},
            ("cls", "max", "mean"),
            True,
        ),
        ({"pooling_mode_lasttoken": True}, ("lasttoken",), True),
        ({"embedding_dimension": 8, "pooling_mode": "weightedmean", "include_prompt": False}, ("weightedmean",), False),
        ({"pooling_mode": ["cls", "mean"]}, ("cls", "mean"), True),
        ({}, ("mean",), True),
    ],
)
def test_st_pooling_both_layouts(config: dict, modes: tuple, include: bool) -> None:  # type: ignore[type-arg]
    parsed = parse_st_pooling(config, where=Path("x"))
    assert parsed.modes == modes and parsed.include_prompt is include


def test_st_pooling_unknown_mode() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        parse_st_pooling({"pooling_mode": "bogus"}, where=Path("x"))


@pytest.mark.parametrize(
    "types",
    [
        (
            "sentence_transformers.models.Transformer",
            "sentence_transformers.models.Pooling",
            "sentence_transformers.models.Normalize",
        ),
        (
            "sentence_transformers.base.modules.transformer.Transformer",
            "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
            "sentence_transformers.base.modules.normalize.Normalize",
        ),
    ],
)
def test_st_module_paths_old_and_new(tmp_path: Path, types: tuple[str, str, str]) -> None:
    modules = [
        {"idx": i, "name": str(i), "path": p, "type": t}
        for i, (p, t) in enumerate(zip(["", "1_Pooling", "2_Normalize"], types, strict=True))
    ]
    d = _model_dir(
        tmp_path,
        BERT,
        {
            "modules.json": modules,
            "1_Pooling/config.json": {"pooling_mode": "cls"},
            "sentence_bert_config.json": {"max_seq_length": 128, "do_lower_case": True},
            "config_sentence_transformers.json": {"prompts": {"q": "query: "}, "default_prompt_name": "q"},
        },
    )
    m = resolve_model(str(d))
    assert m.st_pooling is not None and m.st_pooling.modes == ("cls",)
    assert m.st_normalize is True
    assert (m.max_length, m.do_lower_case) == (128, True)
    plan = build_plan(_run(), m, "embed")
    assert plan.pooling.label == "CLS" and plan.params.normalize is True
    assert plan.prompt == "query: "  # the model's default prompt name applies


def test_unknown_st_module_is_refused(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, BERT, {"modules.json": [{"path": "1", "type": "sentence_transformers.models.LSTM"}]})
    with pytest.raises(ConfigError, match="LSTM"):
        resolve_model(str(d))


def test_max_length_rules(tmp_path: Path) -> None:
    roberta = {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "hidden_size": 8,
        "max_position_embeddings": 514,
        "pad_token_id": 1,
    }
    assert resolve_model(str(_model_dir(tmp_path, roberta))).max_length == 512
    d = _model_dir(tmp_path, BERT, {"tokenizer_config.json": {"model_max_length": 300}})
    m = resolve_model(str(d))
    assert (m.max_length, m.max_length_source) == (300, "tokenizer model_max_length")
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30}))
    assert resolve_model(str(d)).max_length == 512
    assert resolve_model(str(d), max_model_len=64).max_length == 64
    with pytest.raises(UsageError):
        resolve_model(str(d), max_model_len=1000)
    no_limit = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 8}
    d2 = tmp_path / "n"
    d2.mkdir()
    (d2 / "config.json").write_text(json.dumps(no_limit))
    with pytest.raises(ConfigError, match="max-model-len"):
        resolve_model(str(d2))
    assert resolve_model(str(d2), max_model_len=77).max_length == 77


def test_architecture_defaults_and_tasks(tmp_path: Path) -> None:
    m = resolve_model(str(_model_dir(tmp_path, BERT)))
    assert m.supported_tasks == ("embed", "token_embed") and m.default_pooling == "CLS"
    qwen = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 8,
        "max_position_embeddings": 100,
    }
    with pytest.raises(ConfigError, match="--convert embed"):
        resolve_model(str(_model_dir(tmp_path, qwen)))
    m = resolve_model(str(_model_dir(tmp_path, qwen)), convert="embed")
    assert m.is_decoder and m.default_pooling == "LAST"
    cls = dict(BERT, architectures=["BertForSequenceClassification"])
    m = resolve_model(str(_model_dir(tmp_path, cls)))
    assert m.supported_tasks == ("classify",)  # the [CLS] pooler comes first: no per-token form
    with pytest.raises(UsageError, match="does not support 'embed'"):
        build_plan(_run(), m, "embed")
    qwen_cls = dict(qwen, architectures=["Qwen3ForSequenceClassification"], num_labels=3)
    m = resolve_model(str(_model_dir(tmp_path, qwen_cls)))
    assert m.supported_tasks == ("classify", "token_classify") and m.classifier is not None
    assert (m.classifier.head, m.classifier.num_labels, m.default_tok_pooling) == ("sequence", 3, "ALL")
    ner = dict(BERT, architectures=["BertForTokenClassification"], id2label={"0": "O", "1": "B-PER"})
    m = resolve_model(str(_model_dir(tmp_path, ner)))
    assert m.supported_tasks == ("token_classify",) and m.classifier is not None
    assert (m.classifier.head, m.classifier.num_labels) == ("token", 2)


def test_reward_models_take_their_head_size_from_the_weights(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    base = {"model_type": "qwen2", "hidden_size": 8, "max_position_embeddings": 100, "num_labels": 2}
    for arch, head, labels, pooling, step in [
        ("Qwen2ForRewardModel", {"score.0.weight": (8, 8), "score.2.weight": (1, 8)}, 1, "ALL", None),
        ("Qwen2ForProcessRewardModel", {"score.0.weight": (8, 8), "score.2.weight": (2, 8)}, 2, "STEP", 151651),
        ("InternLM2ForRewardModel", {"v_head.weight": (1, 8)}, 1, "ALL", None),
    ]:
        d = _model_dir(tmp_path / arch, dict(base, architectures=[arch]))
        save_file({k: torch.zeros(shape) for k, shape in head.items()}, str(d / "model.safetensors"))
        m = resolve_model(str(d))
        assert m.supported_tasks == ("token_classify", "classify") and m.classifier is not None
        assert (m.classifier.head, m.classifier.num_labels) == ("reward", labels)
        assert (m.default_tok_pooling, m.default_step_tag_id, m.raw_rewards) == (pooling, step, step is None)
    d = _model_dir(tmp_path / "none", dict(base, architectures=["Qwen2ForRewardModel"]))
    save_file({"model.norm.weight": torch.zeros(8)}, str(d / "model.safetensors"))
    with pytest.raises(ConfigError, match="no reward head weights"):
        resolve_model(str(d))


def test_precedence_flags_over_pooler_config_over_preset_over_st(tmp_path: Path) -> None:
    d = _model_dir(
        tmp_path,
        BERT,
        {
            "modules.json": [{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}],
            "1_Pooling/config.json": {"pooling_mode": "mean"},
        },
    )
    m = resolve_model(str(d))
    base = build_plan(_run(), m, "embed")
    assert base.pooling.label == "MEAN" and base.params.normalize is False  # no Normalize module
    preset = Preset(pooler={"pooling_type": "CLS", "normalize": True})
    p = build_plan(_run(preset=preset, preset_name="t"), m, "embed")
    assert (p.pooling.label, p.params.normalize) == ("CLS", True)
    pc = parse_pooler_config({"pooling_type": "LAST"}, source="test")
    p = build_plan(_run(preset=preset, preset_name="t", pooler_config=pc), m, "embed")
    assert (p.pooling.label, p.params.normalize) == ("LAST", True)
    flags = PoolerConfig(pooling_type="MEAN", normalize=False).canonical()
    p = build_plan(_run(preset=preset, preset_name="t", pooler_config=pc, pooler_flags=flags), m, "embed")
    assert (p.pooling.label, p.params.normalize) == ("MEAN", False)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"pooling_type": "MEAN", "seq_pooling_type": "CLS"}, "Cannot set both"),
        ({"logit_bias": 1.0, "logit_mean": 2.0}, "logit_bias"),
        ({"logit_scale": 0}, "division by zero"),
        ({"logit_sigma": 0}, "division by zero"),
        ({"pooling_type": "SUM"}, "unknown pooling type"),
        ({"dimensions": 0}, "greater than 0"),
        ({"step_tag_id": 3, "pooling_type": "ALL"}, "STEP"),
        ({"normalize": True, "use_activation": False}, "disagree"),
        ({"not_a_field": 1}, "not_a_field"),
    ],
)
def test_pooler_config_validation(data: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(UsageError, match=message):
        parse_pooler_config(data, source="test")


def test_pooler_config_aliases() -> None:
    pc = parse_pooler_config({"pooling_type": "all", "logit_scale": 4.0, "softmax": False}, source="t")
    assert pc.tok_pooling_type == "ALL" and pc.logit_sigma == 0.25 and pc.use_activation is False


def test_prompt_name_lookup(tmp_path: Path) -> None:
    m = resolve_model(str(_model_dir(tmp_path, BERT)))
    preset = Preset(prompts={"query": "query: ", "passage": "passage: "}, default_prompt_name="passage")
    assert build_plan(_run(preset=preset), m, "embed").prompt == "passage: "
    assert build_plan(_run(preset=preset, prompt_name="query"), m, "embed").prompt == "query: "
    assert build_plan(_run(preset=preset, prompt="X "), m, "embed").prompt == "X "
    with pytest.raises(UsageError, match="passage, query"):
        build_plan(_run(preset=preset, prompt_name="nope"), m, "embed")


def test_shipped_presets_parse() -> None:
    from poolcli.request import load_preset, preset_names

    names = preset_names()
    for required in ("sentence-transformers", "e5", "bge", "decoder-last", "qwen3-embedding"):
        assert required in names
    for name in names:
        preset, _ = load_preset(name)
        assert preset is not None and preset.description
        parse_pooler_config(preset.pooler, source=name)


def test_hugging_face_id_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(BERT))
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    m = resolve_model("acme/tiny")
    assert (m.name, m.source, Path(m.path)) == ("acme/tiny", "hf-cache", snapshot)
    with pytest.raises(NoInputError, match="local Hugging Face cache"):
        resolve_model("acme/missing")


def test_hf_overrides_change_architecture_and_matryoshka(tmp_path: Path) -> None:
    cls = dict(BERT, architectures=["BertForSequenceClassification"])
    d = _model_dir(tmp_path, cls)
    m = resolve_model(str(d), hf_overrides={"architectures": ["BertModel"], "matryoshka_dimensions": [4, 8]})
    assert m.supported_tasks == ("embed", "token_embed")
    assert m.is_matryoshka and m.matryoshka_dimensions == (4, 8)
    assert build_plan(_run(pooler_flags=PoolerConfig(dimensions=4)), m, "embed").params.dimensions == 4


def test_pooler_config_from_json_and_toml_files(tmp_path: Path) -> None:
    from poolcli.config import load_json_or_file

    (tmp_path / "p.toml").write_text('pooling_type = "LAST"\nnormalize = false\n')
    (tmp_path / "p.json").write_text('{"pooling_type": "CLS"}')
    assert load_json_or_file(str(tmp_path / "p.toml"), what="t") == {"pooling_type": "LAST", "normalize": False}
    assert load_json_or_file(str(tmp_path / "p.json"), what="t") == {"pooling_type": "CLS"}
    assert load_json_or_file('{"dimensions": 8}', what="t") == {"dimensions": 8}
    with pytest.raises(UsageError, match="invalid JSON"):
        load_json_or_file("{bad", what="t")
    with pytest.raises(UsageError, match="neither"):
        load_json_or_file(str(tmp_path / "missing.json"), what="t")


def test_old_layout_with_transformer_in_a_subfolder(tmp_path: Path) -> None:
    d = tmp_path / "old"
    (d / "0_Transformer").mkdir(parents=True)
    (d / "0_Transformer" / "config.json").write_text(json.dumps(BERT))
    (d / "0_Transformer" / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 200, "do_lower_case": True})
    )
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (d / "modules.json").write_text(
        json.dumps(
            [
                {"path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
                {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    m = resolve_model(str(d))
    assert Path(m.path) == d / "0_Transformer" and Path(m.root) == d
    assert (m.max_length, m.do_lower_case) == (200, True)


def test_pooling_override_sets_the_vector_size(tmp_path: Path) -> None:
    d = _model_dir(
        tmp_path,
        BERT,
        {
            "modules.json": [{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}],
            "1_Pooling/config.json": {"pooling_mode": ["mean", "max"]},
        },
    )
    m = resolve_model(str(d))
    assert build_plan(_run(), m, "embed").embedding_size == 16
    assert build_plan(_run(pooler_flags=PoolerConfig(seq_pooling_type="CLS")), m, "embed").embedding_size == 8


def test_chunked_processing_plan(tmp_path: Path) -> None:
    m = resolve_model(str(_model_dir(tmp_path, BERT)))
    pc = parse_pooler_config({"enable_chunked_processing": True, "max_embed_len": 4096}, source="t")
    plan = build_plan(_run(pooler_config=pc), m, "embed")
    assert plan.chunk and plan.max_embed_len == 4096 and plan.describe()["on_too_long"] == "chunk"
    assert build_plan(_run(on_too_long="chunk"), m, "embed").chunk
    assert not build_plan(_run(), m, "embed").chunk
    cls = resolve_model(str(_model_dir(tmp_path / "c", BERT | {"architectures": ["BertForSequenceClassification"]})))
    with pytest.raises(UsageError, match="embed and token-embed"):
        build_plan(_run(on_too_long="chunk"), cls, "classify")


def test_default_output_names() -> None:
    from poolcli.io.writers import default_output

    assert default_output("logs/2024.01.05.jsonl", "embed") == "logs/2024.01.05.embed.parquet"
    assert default_output("c.v2.ndjson.gz", "embed") == "c.v2.embed.parquet"
    assert default_output("data/", "embed") == "data.embed.parquet"
    assert default_output("-", "embed") == "stdin.embed.parquet"
