"""Values derived from the config and the shape of the job, kept out of the config."""

from __future__ import annotations

from dataclasses import dataclass

from dist_train.config import Config
from dist_train.errors import ConfigError


@dataclass(frozen=True)
class Resolved:
    world_size: int
    global_batch_size: int
    per_rank_batch_size: int  # samples one rank handles per optimizer step
    micro_batch_size: int  # samples one rank handles per forward/backward
    grad_accum_steps: int
    strategy: str  # "single", "ddp" or "deepspeed"


def resolve(config: Config, world_size: int) -> Resolved:
    """Check the rules that depend on the number of workers, before any process
    group starts, and derive the per-rank sizes."""
    t = config.train
    per_step = world_size * t.grad_accum_steps
    if t.global_batch_size % per_step:
        lower = t.global_batch_size - t.global_batch_size % per_step
        suggestions = ", ".join(str(v) for v in (lower, lower + per_step) if v > 0)
        raise ConfigError(
            "train.global_batch_size",
            f"{t.global_batch_size} is not divisible by {world_size} worker(s) x "
            f"{t.grad_accum_steps} accumulation step(s) = {per_step}",
            f"use a multiple of {per_step}, e.g. {suggestions}",
        )
    strategy = config.strategy.name
    if strategy == "auto":
        strategy = "ddp" if world_size > 1 else "single"
    if strategy == "single" and world_size > 1:
        raise ConfigError("strategy.name", f"'single' cannot run {world_size} workers", "use strategy.name=ddp or auto")
    per_rank = t.global_batch_size // world_size
    return Resolved(
        world_size=world_size,
        global_batch_size=t.global_batch_size,
        per_rank_batch_size=per_rank,
        micro_batch_size=per_rank // t.grad_accum_steps,
        grad_accum_steps=t.grad_accum_steps,
        strategy=strategy,
    )
