"""A stage kind for tests only (registered with monkeypatch): records what the stage was given, trains nothing."""

from __future__ import annotations

import torch

from mixtune.train.stages import StageContext, StageResult

SEEN: list[dict] = []


def run_stage(ctx: StageContext) -> StageResult:
    with torch.no_grad():
        checksum = float(sum(p.double().sum() for p in ctx.model.parameters()))
    SEEN.append({"name": ctx.name, "kind": ctx.kind, "lr": ctx.recipe.train.lr, "checksum": checksum,
                 "sources": sorted({ex["source"] for ex in ctx.examples}), "n": len(ctx.examples)})
    return StageResult(ctx.name, ctx.kind, steps=1, finished=True, n_examples=len(ctx.examples),
                       metrics={"probe/seen": float(len(ctx.examples))})
