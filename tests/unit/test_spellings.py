"""The seeds' spellings (vLLM's flag names) rewritten to poolcli's before parsing."""

from __future__ import annotations

import pytest

from poolcli.commands.spellings import normalize
from poolcli.errors import UsageError

OPTIONS = {
    "embed": {"--pooler-config": True, "--hf-overrides": True, "--max-model-len": True, "--output": True},
    "rerank": {"--top-n": True, "--query": True, "--max-tokens-per-query": True, "--return-documents": False},
}


def test_aliases_and_underscores() -> None:
    args = ["embed", "in.jsonl", "--override-pooler-config", "{}", '--hf_overrides={"a": 1}', "--max_model_len", "9"]
    assert normalize(args, OPTIONS) == [
        "embed", "in.jsonl", "--pooler-config", "{}", "--hf-overrides={\"a\": 1}", "--max-model-len", "9",
    ]  # fmt: skip
    # An underscore form the command does not have is left for the parser to refuse; values are never touched.
    assert normalize(["embed", "--no_such", "a_b"], OPTIONS) == ["embed", "--no_such", "a_b"]
    assert normalize(["embed", "--", "--hf_overrides"], OPTIONS) == ["embed", "--", "--hf_overrides"]


def test_task_and_runner_agree_or_are_refused() -> None:
    assert normalize(["embed", "x", "--task", "embed", "--runner=pooling"], OPTIONS) == ["embed", "x"]
    assert normalize(["rerank", "x", "--task=score"], OPTIONS) == ["rerank", "x"]
    with pytest.raises(
        UsageError, match="--task classify contradicts the subcommand embed; that is `poolcli classify`"
    ):
        normalize(["embed", "x", "--task", "classify"], OPTIONS)
    with pytest.raises(UsageError, match="pooling models only"):
        normalize(["embed", "x", "--runner", "generate"], OPTIONS)
    with pytest.raises(UsageError, match="needs a value"):
        normalize(["embed", "x", "--task"], OPTIONS)


def test_values_are_never_rewritten() -> None:
    """A value that reads like a flag (a query, say) is copied as it is, and vLLM's underscore form of an alias
    works."""
    args = ["rerank", "in.jsonl", "--query", "--max_tokens_per_query", "--return-documents", "--top_n", "3"]
    assert normalize(args, OPTIONS) == [
        "rerank", "in.jsonl", "--query", "--max_tokens_per_query", "--return-documents", "--top-n", "3",
    ]  # fmt: skip
    assert normalize(["rerank", "x", "--query", "--task", "--task", "auto"], OPTIONS) == [
        "rerank",
        "x",
        "--query",
        "--task",
    ]
    assert normalize(["embed", "x", "--override_pooler_config", "{}"], OPTIONS) == [
        "embed",
        "x",
        "--pooler-config",
        "{}",
    ]
