"""Where a run starts, decided before anything in the run directory changes.

`plan_start` reads (never writes) the run directory: fresh, or the newest
valid checkpoint (or the one named), whether that run already finished, and
what the new config changes compared with the stored one (refused changes
raise here). `open_run_dir` is the first write: it moves an earlier run aside
for `--fresh`, makes the directory and writes `config.yaml`. Both run on rank
0 (and in `dist-train launch` before any worker starts), so a rejected
command leaves the run directory byte for byte as it was."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dist_train import checkpoint as ckpt
from dist_train.atomic import write_atomic
from dist_train.config import Config, relevant_dict, to_dict, unused_keys
from dist_train.errors import DistTrainError, taken_from
from dist_train.resolve import Resolved
from dist_train.resume_changes import Change, ResumeChanges, compare


@dataclass(frozen=True)
class StartPlan:
    checkpoint: ckpt.CheckpointInfo | None = None
    changes: ResumeChanges = field(default_factory=ResumeChanges)
    finished: bool = False  # the checkpoint ends a finished run and the config asks for nothing more
    metrics_lines: int | None = None  # metrics.jsonl's length at the checkpoint
    wandb_run_id: str | None = None

    def record(self) -> dict[str, Any]:
        """As JSON: how `dist-train launch` hands its plan to its workers."""
        info = self.checkpoint
        return {"checkpoint": None if info is None else {"path": str(info.path), "manifest": info.manifest},
                "changes": [[c.key, c.old, c.new, c.kind, c.why] for c in self.changes.changes],
                "finished": self.finished, "metrics_lines": self.metrics_lines, "wandb_run_id": self.wandb_run_id}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "StartPlan":
        info = record["checkpoint"]
        return cls(None if info is None else ckpt.CheckpointInfo(Path(info["path"]), info["manifest"]),
                   ResumeChanges(tuple(Change(*c) for c in record["changes"])), bool(record["finished"]),
                   record["metrics_lines"], record["wandb_run_id"])

    def resume_line(self) -> str:
        info = self.checkpoint
        if info is None:
            return ""
        line = f"dist-train: resuming from {info.path} (epoch {info.manifest.get('epoch')}, step {info.global_step})"
        changed = self.changes.line()
        return f"{line}; {changed}" if changed else line

    def finished_line(self, run_dir: Path, script: bool = False) -> str:
        """`script`: the run is a script's (dist_train.fit), which has no --fresh."""
        assert self.checkpoint is not None
        fresh = ("Set run.resume=never in the config the script gives dist_train.fit (or as one of its overrides)"
                 if script else "Pass --fresh")
        line = (f"dist-train: the run in {run_dir} already finished at step {self.checkpoint.global_step}; nothing to "
                f"do. {fresh} to train again from scratch (the earlier run is kept, renamed), or raise train.epochs "
                "to go on")
        changed = self.changes.line()
        return f"{line} ({changed}: they would apply only if it went on)" if changed else line


def plan_start(cfg: Config, resolved: Resolved, warn: Any = None) -> StartPlan:
    """Read-only. Raises DistTrainError for a named checkpoint that does not
    verify and for config changes the checkpoint cannot continue with."""
    warn = warn or (lambda m: print(m, file=sys.stderr, flush=True))
    run_dir = Path(cfg.run.dir)
    info = None
    if cfg.run.resume == "auto":
        info = ckpt.find_latest_valid(run_dir, warn=warn)
    elif cfg.run.resume != "never":
        info = ckpt.verify_checkpoint(Path(cfg.run.resume))
    _check_stream_layout(cfg, resolved, info)
    if info is None:
        return StartPlan()
    stored = stored_settings(info)
    _check_world_size(info, stored, resolved)
    changes = compare(stored["config"], to_dict(cfg), stored["strategy"], resolved.strategy, unused_keys(cfg),
                      mode_recorded="predictor.pt" in (info.manifest.get("files") or {}))
    changes.raise_if_refused(str(run_dir), str(info.path))
    finished = bool(info.manifest.get("finished")) and not _asks_for_more(cfg, info)
    return StartPlan(info, changes, finished, stored["metrics_lines"], stored["wandb_run_id"])


def _check_stream_layout(cfg: Config, resolved: Resolved, info: ckpt.CheckpointInfo | None) -> None:
    """Streamed shards must divide among the run's streams x readers: a fresh
    run's (its workers x data.loader_workers), or the ones a resumed run began
    with, on any number of workers now."""
    if cfg.data.source != "shards" or cfg.data.cache != "none":
        return
    from dist_train.data.shards import load_manifest
    from dist_train.data.stream import StreamLayout, check_shard_readers

    layout = (StreamLayout.of_checkpoint(info.manifest) if info is not None
              else StreamLayout(resolved.world_size, cfg.data.loader_workers, cfg.data.shuffle_buffer))
    check_shard_readers(load_manifest(cfg.data.path), layout.streams, layout.readers)


def _check_world_size(info: ckpt.CheckpointInfo, stored: dict[str, Any], resolved: Resolved) -> None:
    """Every strategy resumes on any number of workers but DeepSpeed's ZeRO,
    whose optimizer partitions load only on as many workers as saved them."""
    saved_by = int(info.manifest.get("world_size", resolved.world_size))
    stage = int(((stored.get("config") or {}).get("strategy") or {}).get("zero_stage", 0))
    if stored.get("strategy") == "deepspeed" and resolved.strategy == "deepspeed" and stage > 0 \
            and saved_by != resolved.world_size:
        raise DistTrainError(f"checkpoint {info.path} holds DeepSpeed ZeRO-{stage} optimizer state partitioned over "
                             f"{saved_by} workers, which DeepSpeed loads only on {saved_by} (this job has "
                             f"{resolved.world_size}): resume with {saved_by} workers; for runs that change size, "
                             f"strategy.name=fsdp shards the same state and resumes on any number of workers")


def stored_settings(info: ckpt.CheckpointInfo) -> dict[str, Any]:
    """The config, strategy, metrics line count and W&B run id a checkpoint was
    saved with: from its manifest, or (checkpoints written before the manifest
    held them) from trainer.pt."""
    m = info.manifest
    if "config" in m:
        return {k: m.get(k) for k in ("config", "strategy", "metrics_lines", "wandb_run_id")}
    trainer = ckpt.load_file(info.path, "trainer.pt") or {}
    strategy = "deepspeed" if "deepspeed" in trainer.get("optimizer", {}) else "ddp"
    return {"config": yaml.safe_load(trainer.get("config") or "{}") or {}, "strategy": strategy,
            "metrics_lines": trainer.get("metrics_lines"), "wandb_run_id": trainer.get("wandb_run_id")}


def _asks_for_more(cfg: Config, info: ckpt.CheckpointInfo) -> bool:
    """A finished run goes on only when the config now asks for more epochs (and
    it did not stop early)."""
    return not info.manifest.get("early_stopped") and int(info.manifest.get("epoch", 0)) < cfg.train.epochs


def open_run_dir(cfg: Config) -> None:
    """The first change to the run directory: `--fresh` moves an earlier run
    aside (never deletes it), then the directory and config.yaml are written."""
    run_dir = Path(cfg.run.dir)
    if cfg.run.resume == "never" and run_dir.exists() and any(run_dir.iterdir()):
        aside = run_dir.with_name(f"{run_dir.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        print(f"dist-train: starting afresh; the earlier run in {run_dir} was moved to {aside}", flush=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", config_yaml(cfg))
    except OSError as exc:
        raise DistTrainError(f"cannot write the run directory {run_dir}{taken_from(run_dir)} ({exc.strerror or exc}); choose a run.dir "
                             "you can write (run.dir=...)") from None


def config_yaml(cfg: Config) -> str:
    """config.yaml: the settings the run uses (`relevant_dict`: keys its options
    never read are left out, as in W&B). `run.resume` is left out too: it says
    how this command started, so `dist-train run RUN_DIR/config.yaml` resumes
    the run (a `--fresh` start must not start it over again)."""
    tree = relevant_dict(cfg)
    tree["run"].pop("resume", None)
    return ("# the settings this run uses; keys its options never read are left out (they keep their defaults)\n"
            + yaml.safe_dump(tree, sort_keys=False))
