"""Task -> engine: the plan builder and engine class of each task, in one place (the drivers' only way in)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from poolcli.config import (
    ClassifyOptions,
    EmbedOptions,
    EngineConfig,
    PlanOptions,
    ScoreOptions,
    TaskOptions,
    TokenClassifyOptions,
    TokenEmbedOptions,
)
from poolcli.errors import InternalError
from poolcli.faults import NO_FAULTS, Faults
from poolcli.vocab import Task

if TYPE_CHECKING:
    from poolcli.engine.base import TaskEngine
    from poolcli.io.pairs import PairJob
    from poolcli.model.load import Loader
    from poolcli.model.resolve import ResolvedModel


def build_engine(
    task: Task,
    model: ResolvedModel,
    loader: Loader,
    config: EngineConfig,
    plan_options: PlanOptions,
    options: TaskOptions,
    *,
    keep_columns: tuple[str, ...] = (),
    job: PairJob | None = None,
    faults: Faults = NO_FAULTS,
    warn: Callable[[str], None] = lambda message: None,
) -> TaskEngine:
    """The task's plan (model + options, in the design's precedence) and its engine; plan errors raise here,
    before anything is loaded or written."""
    if task == "embed":
        from poolcli.engine.embed import EmbedEngine
        from poolcli.engine.plan import build_plan

        assert isinstance(options, EmbedOptions)
        return EmbedEngine(
            build_plan(plan_options, model, "embed"),
            loader,
            config,
            options=options,
            keep_columns=keep_columns,
            faults=faults,
            warn=warn,
        )
    if task == "classify":
        from poolcli.engine.classify import ClassifyEngine, build_classify_plan

        assert isinstance(options, ClassifyOptions)
        return ClassifyEngine(
            build_classify_plan(plan_options, model),
            loader,
            config,
            options=options,
            keep_columns=keep_columns,
            faults=faults,
            warn=warn,
        )
    if task == "token_classify" and model.bge_m3 is not None:
        from poolcli.engine.lexical import LexicalEngine
        from poolcli.engine.plan import build_plan

        return LexicalEngine(
            build_plan(plan_options, model, "token_classify"),
            loader,
            config,
            keep_columns=keep_columns,
            faults=faults,
            warn=warn,
        )
    if task == "token_classify":
        from poolcli.engine.token_classify import TokenClassifyEngine, build_token_classify_plan

        assert isinstance(options, TokenClassifyOptions)
        tplan = build_token_classify_plan(plan_options, model)
        return TokenClassifyEngine(
            tplan, loader, config, options=options, keep_columns=keep_columns, faults=faults, warn=warn
        )
    if task == "token_embed":
        from poolcli.engine.plan import build_plan
        from poolcli.engine.token_embed import TokenEmbedEngine

        assert isinstance(options, TokenEmbedOptions)
        return TokenEmbedEngine(
            build_plan(plan_options, model, "token_embed"),
            loader,
            config,
            options=options,
            keep_columns=keep_columns,
            faults=faults,
            warn=warn,
        )
    if task in ("score", "rerank"):
        from poolcli.engine.plan import build_score_plan
        from poolcli.engine.score import ScoreEngine

        assert isinstance(options, ScoreOptions) and job is not None
        splan = build_score_plan(plan_options, options, model)
        return ScoreEngine(
            splan,
            job,
            loader,
            config,
            rerank=task == "rerank",
            options=options,
            keep_columns=keep_columns,
            faults=faults,
            warn=warn,
        )
    raise InternalError(f"no engine for task {task!r}")
