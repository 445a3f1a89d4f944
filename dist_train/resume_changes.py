"""What a resumed run may change: the stored config against the new one.

Each field of the config carries its rule (dist_train.config: `fixed`,
`changeable`, `at_start`); this module compares and reports. Each changed
key falls in one of three kinds:
- `refused`: the run cannot continue with it (the model the checkpoint holds,
  the data set and its order, the loss, the optimizer's or the strategy's
  state layout). The command stops before anything in the run directory
  changes, with a hint (`--fresh`, or a new `run.dir`).
- `applied`: the run continues with the new value (epochs, learning rate and
  schedule, early stopping, checkpoints, logging, ...). The changes are
  printed in one line and recorded in the `resume` record (metrics.jsonl and
  W&B).
- `ignored`: the value only matters when a run starts (initialization); it
  is reported as having no effect.

`data.normalize: auto` means the mode the data's shape gives (per_feature or
per_channel), which only the data knows (a custom dataset's shape is known
once it is read; data given to the Python API is not the config's). So
`auto` against per_channel or per_feature is no change here when the
checkpoint records the mode its run used (predictor.pt, in every checkpoint
since the model bundle): the run compares that record with the mode it
resolved when it loads the checkpoint (`check_normalize`), on every rank
before the run directory changes, and refuses another. A checkpoint without
that record keeps the field's rule: refused, put the setting back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dist_train.config import default_value, resume_rule
from dist_train.data.normalization import AUTO
from dist_train.errors import DistTrainError

NOT_COMPARED = {"run.resume", "run.dir"}


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    kind: str  # "refused", "applied" or "ignored"
    why: str = ""

    def describe(self) -> str:
        return f"{self.key} {_short(self.old)} -> {_short(self.new)}"


@dataclass(frozen=True)
class ResumeChanges:
    changes: tuple[Change, ...] = field(default_factory=tuple)

    @property
    def refused(self) -> list[Change]:
        return [c for c in self.changes if c.kind == "refused"]

    @property
    def applied(self) -> list[Change]:
        return [c for c in self.changes if c.kind == "applied"]

    @property
    def ignored(self) -> list[Change]:
        return [c for c in self.changes if c.kind == "ignored"]

    def record(self) -> dict[str, list[Any]]:
        """For the `resume` record: key -> [old, new] of what the run applies."""
        return {c.key: [c.old, c.new] for c in self.applied}

    def line(self) -> str:
        """One line for the console, empty when nothing changed."""
        parts = []
        if self.applied:
            parts.append("changed settings: " + ", ".join(c.describe() for c in self.applied))
        if self.ignored:
            parts.append("no effect on a resumed run (they apply when a run starts): "
                         + ", ".join(c.describe() for c in self.ignored))
        return "; ".join(parts)

    def raise_if_refused(self, run_dir: str, checkpoint: str) -> None:
        refused = self.refused
        if not refused:
            return
        what = "; ".join(f"{c.describe()} ({c.why})" for c in refused)
        raise DistTrainError(
            f"cannot resume the run in {run_dir} from {checkpoint} with this config: {what}. Pass --fresh to start "
            f"over (the earlier run is kept, renamed), set a new run.dir, or put the setting back")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and not key.endswith("deepspeed_config"):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def compare(stored: dict[str, Any], new: dict[str, Any], stored_strategy: str, new_strategy: str,
            unused: set[str] | frozenset[str] = frozenset(), mode_recorded: bool = False) -> ResumeChanges:
    """Changes from the `stored` config (plain dicts, as `config.to_dict` gives)
    to `new`. `*_strategy` are the resolved strategies (single/ddp/deepspeed):
    ddp and single share a state layout, deepspeed has its own. `unused`: the
    keys the new config's options never read (`config.unused_keys`), whatever
    their value: not compared (config.yaml leaves them out, so a run started
    again from it has them at their defaults). `mode_recorded`: the checkpoint
    records the normalization its run used (predictor.pt), so `auto` against a
    named mode is left to `check_normalize` when it loads."""
    old_flat, new_flat = flatten(stored), flatten(new)
    changes = []
    for key in sorted(set(old_flat) | set(new_flat)):
        if key in NOT_COMPARED or key in unused:
            continue
        old, value = old_flat.get(key), new_flat.get(key)
        if _same(old, value) or (key not in old_flat and _is_default(key, value)):
            continue  # unchanged, or a key the stored (older) config did not have, at its default
        if key == "data.normalize" and mode_recorded and _may_resolve_alike(old, value):
            continue  # what auto means for these inputs is known once the data is: compared on load
        changes.append(_classify(key, old, value, old_flat, new_flat))
    layouts = ("deepspeed", "fsdp")  # each keeps its state its own way; single and ddp share one
    if any((stored_strategy == s) != (new_strategy == s) for s in layouts):
        changes.append(Change("strategy.name", stored_strategy, new_strategy, "refused",
                              "the checkpoint holds another strategy's state"))
    elif stored_strategy == new_strategy == "deepspeed" and old_flat.get("train.precision") != new_flat.get("train.precision"):
        changes = [c if c.key != "train.precision" else Change(c.key, c.old, c.new, "refused",
                                                               "DeepSpeed keeps precision in its state") for c in changes]
    return ResumeChanges(tuple(c for c in changes if c.key != "strategy.name" or c.kind == "refused"))


def _classify(key: str, old: Any, new: Any, old_flat: dict, new_flat: dict) -> Change:
    """The field's own rule (dist_train.config: fixed / changeable / at_start),
    but for the cases that depend on other settings."""
    streamed = new_flat.get("data.source") == "shards" and new_flat.get("data.cache") == "none"
    if key in ("data.loader_workers", "data.shuffle_buffer") and streamed:
        return Change(key, old, new, "ignored", "streamed shards keep the run's stream layout")
    if key == "optim.weight_decay" and (old == 0) != (new == 0):
        return Change(key, old, new, "refused", "decay on or off changes the optimizer's parameter groups")
    try:
        kind, why = resume_rule(key)
    except KeyError:  # a key this version no longer has
        kind, why = "ignored", "this version has no such setting"
    return Change(key, old, new, kind, why)


def _may_resolve_alike(a: Any, b: Any) -> bool:
    """`auto` against a mode it can resolve to (never `none`)."""
    return AUTO in (a, b) and {a, b} - {AUTO} <= {"per_channel", "per_feature"}


def _is_default(key: str, value: Any) -> bool:
    try:
        return _same(default_value(key), value)
    except KeyError:
        return False


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_normalize(recorded: str, used: str) -> None:
    """On loading a checkpoint: `recorded`, the normalization mode its run
    used (predictor.pt), against `used`, the one this run resolved
    `data.normalize` to. Every rank loads the same record and resolves the
    same mode from the same data, so every rank raises this together."""
    if recorded != used:
        raise DistTrainError(
            f"cannot resume from this checkpoint with this config: data.normalize gives {used!r} for these inputs "
            f"(auto is per_feature for flat inputs, per_channel for images), but the checkpoint's run normalized them "
            f"{recorded!r} (inputs normalized differently). Set data.normalize={recorded} to go on with it, or pass "
            f"--fresh to start over (the earlier run is kept, renamed), or set a new run.dir")
