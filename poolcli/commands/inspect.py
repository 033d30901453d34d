"""`poolcli inspect`: what poolcli resolved for a model, without loading its weights."""

from __future__ import annotations

import json
from typing import Any

import typer

from poolcli.commands import _options as o


def inspect(
    model: str = typer.Argument(
        "default", help="Model directory or cached Hugging Face id ('default': the bundled all-MiniLM-L6-v2)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    config: o.ConfigPreset = None,
    pooler_config: o.PoolerConfigOpt = None,
    hf_overrides: o.HfOverrides = None,
    convert: o.ConvertOpt = "auto",
    max_model_len: o.MaxModelLen = None,
) -> None:
    """Show the architecture, tasks, pooling, normalisation, dimensions, maximum length and projector."""
    from poolcli.config import PlanOptions, parse_pooler_config
    from poolcli.console import print_text
    from poolcli.engine.plan import build_plan
    from poolcli.model.resolve import resolve_model
    from poolcli.request import load_preset, parse_mapping

    preset, preset_name = load_preset(config)
    overrides = dict(preset.hf_overrides) if preset else {}
    overrides.update(parse_mapping(hf_overrides, what="--hf-overrides"))
    resolved = resolve_model(
        None if model == "default" else model,
        hf_overrides=overrides,
        convert=convert,
        max_model_len=max_model_len,
    )
    task = resolved.supported_tasks[0]
    plan_options = PlanOptions(
        preset=preset,
        preset_name=preset_name,
        pooler_config=parse_pooler_config(
            parse_mapping(pooler_config, what="--pooler-config"), source="--pooler-config"
        ),
    )
    plan = build_plan(plan_options, resolved, task)
    info: dict[str, Any] = {
        "model": resolved.name,
        "path": resolved.path,
        "source": resolved.source,
        "architecture": resolved.architecture,
        "model_type": resolved.model_type,
        "kind": "decoder" if resolved.is_decoder else "encoder",
        "tasks": list(resolved.supported_tasks),
        "default_task": task,
        "pooling_type": plan.pooling.label,
        "pooling_source": plan.pooling.source,
        "normalize": plan.params.normalize,
        "hidden_size": resolved.hidden_size,
        "embedding_size": plan.embedding_size,
        "matryoshka": resolved.is_matryoshka,
        "dimensions_allowed": (
            list(resolved.matryoshka_dimensions)
            if resolved.matryoshka_dimensions
            else (f"1..{plan.embedding_size}" if resolved.is_matryoshka else [plan.embedding_size])
        ),
        "max_length": resolved.max_length,
        "max_length_source": resolved.max_length_source,
        "lower_case": resolved.do_lower_case,
        "projector": [f"Dense({d.in_features}->{d.out_features}, {d.activation})" for d in resolved.dense],
        "prompts": resolved.prompts,
        "default_prompt_name": resolved.default_prompt_name,
        "preset": preset_name,
        "hf_overrides": resolved.hf_overrides,
    }
    if resolved.classifier is not None:
        from poolcli.engine.plan import classifier_activation

        c = resolved.classifier
        # The embedding fields say nothing about a classifier: its own head pools.
        for key in ("pooling_type", "pooling_source", "normalize", "embedding_size", "matryoshka"):
            info.pop(key)
        info.pop("dimensions_allowed")
        info["pooling_type"] = "the model's own classifier head"
        if "token_classify" in resolved.supported_tasks:
            info["token_pooling"] = resolved.default_tok_pooling
            info["step_tag_id"] = resolved.default_step_tag_id
        info["head"] = {
            "sequence": "transformers sequence classifier",
            "token": "transformers token classifier",
            "from_token": "LM head rows (classifier_from_token)",
            "reward": "reward head from the checkpoint",
        }[c.head]
        info["num_labels"] = c.num_labels
        info["labels"] = [c.id2label.get(i, str(i)) for i in range(c.num_labels)] if c.id2label else []
        info["activation"] = "none (raw rewards)" if resolved.raw_rewards else classifier_activation(c)
        info["classifier_from_token"] = (
            f"{', '.join(c.from_token.tokens)} ({c.from_token.method})" if c.from_token else None
        )
        if "classify" in resolved.supported_tasks and not resolved.is_reward:
            info["score_type"] = "cross-encoder" if c.num_labels == 1 else None
            info["pair_encoding"] = "text pair" if c.use_sep_token else "concatenation"
    elif resolved.colbert is not None:
        cb = resolved.colbert
        for key in ("pooling_type", "pooling_source", "normalize", "embedding_size", "matryoshka"):
            info.pop(key)
        info.pop("dimensions_allowed")
        info["pooling_type"] = "ALL (every token)"
        info["score_type"] = "late-interaction"
        info["colbert"] = {
            "layout": cb.layout,
            "projection": f"{cb.projection} (bias-free)" if cb.projection else "Sentence-Transformers Dense",
            "dim": cb.dim,
            "query_prefix": cb.query_prefix,
            "document_prefix": cb.document_prefix,
            "query_length": cb.query_length,
            "document_length": cb.document_length,
            "query_expansion": cb.do_query_expansion,
            "attend_to_expansion_tokens": cb.attend_to_expansion_tokens,
            "skiplist": "".join(cb.skiplist_words) if cb.skiplist_words else "none",
            "settings_from": cb.source,
        }
    elif "embed" in resolved.supported_tasks:
        info["score_type"] = "bi-encoder"
    if resolved.bge_m3 is not None:
        m3 = resolved.bge_m3
        info["bge_m3"] = {
            "dense": "CLS, normalised (embed)",
            "colbert": f"colbert_linear Linear({resolved.hidden_size}, {m3.colbert_dim}) over every token but the "
            "first, normalised (token-embed)",
            "sparse": f"sparse_linear Linear({resolved.hidden_size}, 1) + relu, max per token id (token-classify)",
        }
    if as_json:
        print_text(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    lines = []
    for key, value in info.items():
        if value in (None, [], {}):
            continue
        if isinstance(value, dict):
            shown = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in value.items())
        else:
            shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        lines.append(f"{key.replace('_', ' '):<{width}}  {shown}")
    print_text("\n".join(lines))
