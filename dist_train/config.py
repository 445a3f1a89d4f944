"""One typed config tree: YAML plus dotted `key=value` overrides, validated at load, frozen.

Every section is a frozen dataclass. Loading walks the tree with the type hints,
so an unknown key, a wrong type or a value outside a `Literal` set is rejected
naming its dotted path. Cross-field rules live in `validate()`. Values derived
from the config and the job (per-rank batch, micro batch) live in
`dist_train.resolve.Resolved`, never written back here.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from dist_train.errors import ConfigError, DistTrainError

# elu is the course's ExpLin (one name only: the activation is fixed on resume,
# so two spellings of one network would be refused as another network)
Activation = Literal["relu", "leaky_relu", "tanh", "sigmoid", "selu", "elu", "gelu", "identity"]
# glorot_* and xavier_* are one scheme under its two names; kaiming is kaiming_normal
# (the name configs used before the course's full list)
Init = Literal["constant", "uniform", "gaussian", "xavier_uniform", "glorot_uniform", "xavier_normal",
               "glorot_normal", "kaiming", "kaiming_normal", "kaiming_uniform", "identity", "orthogonal"]
OptimizerName = Literal["sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw"]
# cross_entropy and binary_cross_entropy: class targets; mse: real-valued targets
# (on class targets: against one-hot vectors); l1 and huber: real-valued targets
LossName = Literal["cross_entropy", "binary_cross_entropy", "mse", "l1", "huber"]
# validation metrics: loss for every task; accuracy for classes; mse, mae and r2 for real values
Monitored = Literal["val_loss", "val_accuracy", "val_mse", "val_mae", "val_r2"]


# ----------------------------------------------------------------- what a resume may change
# Each field says what a run resumed from a checkpoint may do with a new
# value (dist_train.resume_changes applies it; a test fails for a field
# without a rule): `fixed` refuses it (the checkpoint cannot continue with it),
# `changeable` applies it, `at_start` reports it as having no effect (it
# matters only when a run starts).

def _ruled(kind: str, default: Any, why: str, factory: Any) -> Any:
    meta = {"resume": kind, "why": why}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def fixed(default: Any = None, why: str = "", factory: Any = None) -> Any:
    return _ruled("refused", default, why, factory)


def changeable(default: Any = None, factory: Any = None) -> Any:
    return _ruled("applied", default, "", factory)


def at_start(default: Any = None, why: str = "", factory: Any = None) -> Any:
    return _ruled("ignored", default, why, factory)


ANOTHER_DATA_SET = "another data set"
ANOTHER_SPLIT = "another split of the data"
ANOTHER_NETWORK = "the checkpoint holds another network"
ZERO_LAYOUT = "the checkpoint holds DeepSpeed state laid out differently"


@dataclass(frozen=True)
class DataConfig:
    # digits: scikit-learn's 8x8 digits in memory; synthetic: Gaussian blobs in
    # memory; breast_cancer, wine (classes) and diabetes (a real value):
    # scikit-learn's tabular sets in memory; shards: a directory written by
    # `dist-train prepare` (data.path); custom: map-style datasets made by
    # data.class_path(**data.init_args)
    source: Literal["digits", "synthetic", "breast_cancer", "wine", "diabetes", "shards", "custom"] = fixed(
        "digits", ANOTHER_DATA_SET)
    path: str = fixed("", ANOTHER_DATA_SET)
    # custom: a function (or class) returning the train, validation and test datasets:
    # "package.module.name", or "file.py:name" (a relative file: from the current directory, as every path)
    class_path: str = fixed("", ANOTHER_DATA_SET)
    init_args: dict = fixed(why=ANOTHER_DATA_SET, factory=dict)
    loader_workers: int = changeable(1)  # DataLoader processes per rank reading shards or a custom dataset (0: the main process)
    shuffle_buffer: int = changeable(4096)  # samples shuffled together by each shard reader
    verify: bool = changeable(True)  # check every shard's size, checksum and blocks before training
    val_fraction: float = fixed(0.15, ANOTHER_SPLIT)
    test_fraction: float = fixed(0.15, ANOTHER_SPLIT)
    split_seed: int = fixed(0, ANOTHER_SPLIT)
    # inputs minus the training split's mean, over its standard deviation:
    # one pair per channel (images) or per feature, or none; auto: per_feature
    # for flat inputs (F,), per_channel for (C, H, W) and any other of 2+ axes.
    # On a resume, auto and the mode it resolves to are the same setting
    # (dist_train.resume_changes)
    normalize: Literal["auto", "per_channel", "per_feature", "none"] = fixed("auto", "inputs normalized differently")
    # Keep the last, smaller global batch of an epoch (every sample seen once per
    # epoch) or drop it (every step has the full global batch).
    drop_last: bool = changeable(False)
    # none: shards streamed, custom items fetched every step, built-in sets held on
    # the device; host / device: every split read once, normalized, and kept in
    # host memory (pinned, for a GPU) or on the device; batches are cut there
    cache: Literal["none", "host", "device"] = changeable("none")
    # synthetic source only: Gaussian class blobs
    num_samples: int = fixed(512, ANOTHER_DATA_SET)
    num_features: int = fixed(32, ANOTHER_DATA_SET)
    num_classes: int = fixed(4, ANOTHER_DATA_SET)


@dataclass(frozen=True)
class ModelConfig:
    name: Literal["mlp", "cnn"] = fixed("mlp", ANOTHER_NETWORK)
    # a model of your own instead of mlp/cnn: a class or function building an
    # nn.Module, "package.module.Name" or "file.py:Name" (a relative file: from the current directory)
    # file, called with init_args (and input_shape, num_classes or num_outputs
    # when its signature asks for them)
    class_path: str = fixed("", ANOTHER_NETWORK)
    init_args: dict = fixed(why=ANOTHER_NETWORK, factory=dict)
    hidden_sizes: tuple[int, ...] = fixed((64,), ANOTHER_NETWORK)
    activation: Activation = fixed("relu", ANOTHER_NETWORK)
    dropout: float = changeable(0.0)
    batch_norm: bool = fixed(False, ANOTHER_NETWORK)
    # batch-norm statistics over the whole global batch (all workers), not each
    # worker's share; with one worker it is ordinary batch norm
    sync_batchnorm: bool = changeable(False)
    init: Init = at_start("kaiming", "used only to initialize a new network")
    init_std: float = at_start(0.01, "used only to initialize a new network")  # gaussian init only
    # uniform init only: weights drawn from U(-init_bound, init_bound)
    init_bound: float = at_start(0.05, "used only to initialize a new network")
    # constant init only: every weight starts at this value (0: torch's zeros_)
    init_value: float = at_start(0.0, "used only to initialize a new network")
    channels: tuple[int, ...] = fixed((16, 32), ANOTHER_NETWORK)  # cnn only


@dataclass(frozen=True)
class OptimConfig:
    name: OptimizerName = fixed("adam", "the checkpoint holds another optimizer's state")
    lr: float = changeable(1e-3)
    momentum: float = changeable(0.0)
    nesterov: bool = changeable(False)
    # switched on or off (0 or not) is refused: it changes the optimizer's parameter groups
    weight_decay: float = changeable(0.0)
    betas: tuple[float, float] = changeable((0.9, 0.999))
    eps: float = changeable(1e-8)
    alpha: float = changeable(0.99)  # rmsprop smoothing
    rho: float = changeable(0.9)  # adadelta decay


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = changeable(10)
    max_steps: Optional[int] = changeable(None)  # stop after this many optimizer steps
    global_batch_size: int = fixed(64, "the position in the epoch is counted in global batches")
    grad_accum_steps: int = changeable(1)
    grad_clip_norm: Optional[float] = changeable(None)
    loss: LossName = fixed("cross_entropy", "another loss")
    seed: int = fixed(0, "the data order and initialization of the run")
    log_every_steps: int = changeable(50)
    # an `lr` record after each step whose LR differs from the last one recorded
    # (so the log holds every step's LR; an unchanged LR is not repeated, since a
    # W&B row costs ~0.2-0.35 ms); false: the LR rides on the `train` records only
    lr_every_step: bool = changeable(True)
    # fp32; bf16: autocast (fp32 weights); fp16: autocast and a dynamic loss
    # scaler under ddp/single, DeepSpeed's fp16 (GPU only) under deepspeed
    precision: Literal["fp32", "bf16", "fp16"] = changeable("fp32")  # refused under DeepSpeed (its state)
    # a non-finite loss or gradient on any rank: stop with a message, or skip the step
    nonfinite: Literal["stop", "skip"] = changeable("stop")
    # how often the ranks agree on a pending stop request (SIGTERM/SIGUSR1); one
    # small all-reduce each time
    stop_check_every_steps: int = changeable(50)
    # run the model through torch.compile (costs start-up time: see docs/performance.md)
    compile: bool = changeable(False)


@dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["constant", "step", "multistep", "exponential", "cosine", "plateau"] = changeable("constant")
    warmup_steps: int = changeable(0)  # linear warmup from 0, combined with any schedule
    step_size_epochs: int = changeable(10)  # step: multiply by gamma every this many epochs
    milestones_epochs: tuple[int, ...] = changeable(())  # multistep: multiply by gamma at these epochs
    gamma: float = changeable(0.1)  # step, multistep; exponential: per epoch
    min_lr: float = changeable(0.0)  # cosine: the floor reached at the last step
    # plateau: multiply by factor when `monitor` has not improved for patience epochs
    factor: float = changeable(0.5)
    patience: int = changeable(2)
    threshold: float = changeable(1e-4)
    monitor: Monitored = changeable("val_loss")
    # linear scaling rule (Goyal et al. 2017): lr x global_batch_size / reference_batch_size
    scale_lr: bool = changeable(False)
    reference_batch_size: int = changeable(256)


@dataclass(frozen=True)
class EarlyStoppingConfig:
    enabled: bool = changeable(False)
    monitor: Monitored = changeable("val_loss")
    mode: Literal["auto", "min", "max"] = changeable("auto")  # auto: min for losses, max for accuracies
    patience: int = changeable(5)
    min_delta: float = changeable(0.0)
    restore_best: bool = changeable(False)  # end with the weights of the best validation epoch


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = changeable(0)  # 0: not by steps
    every_epochs: int = changeable(1)  # 0: not by epochs
    keep_last: int = changeable(3)
    keep_best: bool = changeable(True)  # also keep the best checkpoint by `monitor`
    monitor: Monitored = changeable("val_loss")


@dataclass(frozen=True)
class StrategyConfig:
    # auto: ddp when more than one worker, single otherwise; deepspeed: ZeRO
    # (an optional extra: pip install 'dist-train[deepspeed]')
    # fsdp: torch's fully sharded data parallel (FSDP2): parameters, gradients
    # and optimizer state sharded over the workers; checkpoints resume on any
    # number of workers
    # (deepspeed, fsdp and single/ddp keep their state each their own way: a change between them is refused)
    name: Literal["auto", "single", "ddp", "fsdp", "deepspeed"] = changeable("auto")
    bucket_cap_mb: float = changeable(25.0)
    # fsdp only: the module classes sharded as units (their parameters gathered
    # together for their forward); default: each layer of the built-in networks,
    # each child module with parameters of your own
    fsdp_modules: tuple[str, ...] = changeable(())
    # fsdp only: free a unit's gathered parameters after its forward (less
    # memory; gathered again for the backward)
    reshard_after_forward: bool = changeable(True)
    # deepspeed only: ZeRO stage 0 (plain data parallel), 1 (optimizer state
    # sharded), 2 (+ gradients), 3 (+ parameters)
    zero_stage: int = fixed(2, "the checkpoint holds ZeRO state of another stage")
    offload_optimizer: Literal["none", "cpu"] = fixed("none", ZERO_LAYOUT)
    offload_params: Literal["none", "cpu"] = fixed("none", ZERO_LAYOUT)  # zero_stage 3, or fsdp on GPUs
    # raw DeepSpeed config merged last; keys derived from our config are refused
    deepspeed_config: dict = fixed(why=ZERO_LAYOUT, factory=dict)


@dataclass(frozen=True)
class DistConfig:
    device: Literal["auto", "cpu", "cuda"] = changeable("auto")
    # training: seconds a collective may wait for a peer before the job fails
    # (the backstop behind the stall watchdog)
    timeout_s: float = changeable(120.0)
    # start-up: seconds for the nodes to meet (rendezvous), the process group to
    # form and every collective until the first steps are done (nodes come up
    # minutes apart; the first step compiles, reads, warms up)
    start_timeout_s: float = changeable(600.0)
    # the stall watchdog: seconds a rank may go without progress (a step, an
    # evaluation batch, a checkpoint write) before every rank writes its stacks
    # to run.dir/hang/ and the job stops with exit status 3. None: 20 x the
    # slowest step, evaluation batch or checkpoint write seen, at least 30 s
    # (300 s with train.compile) and at most half of timeout_s; 0: off
    hang_timeout_s: Optional[float] = changeable(None)
    # check that every rank calls the same collective with the same shapes
    # before it runs (dist_train.collective_check): a divergence is named at
    # once, with both call sites, instead of hanging; costs a round trip per
    # collective (see docs/stalls.md)
    check_collectives: bool = changeable(False)


@dataclass(frozen=True)
class WandbConfig:
    # auto: online when an API key is configured (WANDB_API_KEY or `wandb login`),
    # offline otherwise (sync later with `wandb sync`); disabled: no W&B at all
    mode: Literal["auto", "online", "offline", "disabled"] = changeable("auto")
    project: str = changeable("dist-train")
    entity: Optional[str] = changeable(None)
    group: Optional[str] = changeable(None)
    tags: tuple[str, ...] = changeable(())
    name: Optional[str] = changeable(None)


@dataclass(frozen=True)
class RunConfig:
    dir: str = changeable("runs/default")
    progress: bool = changeable(True)
    # auto: continue from the latest valid checkpoint in `dir` when there is one;
    # never: start afresh (an earlier run there is moved aside); or a checkpoint path
    resume: str = changeable("auto")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    run: RunConfig = field(default_factory=RunConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def resume_rule(key: str) -> tuple[str, str]:
    """The rule of a dotted key ("optim.lr", "model.init_args.width"):
    ("refused" | "applied" | "ignored", why). KeyError for a key no section has."""
    section, _, rest = key.partition(".")
    name = rest.split(".")[0]
    for outer in dataclasses.fields(Config):
        if outer.name == section:
            for inner in dataclasses.fields(outer.default_factory):
                if inner.name == name:
                    return inner.metadata["resume"], inner.metadata["why"]
    raise KeyError(key)


def default_value(key: str) -> Any:
    """The default of a dotted key (the section's field), as `to_dict` writes it."""
    section, _, rest = key.partition(".")
    parts = to_dict(Config())[section]
    for part in rest.split("."):
        parts = parts[part]
    return parts


# ----------------------------------------------------------------- loading

def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (or start from defaults when path is None), apply
    `a.b=value` overrides, check types and values, and return the frozen tree.
    Every relative path in it (data.path, run.dir, run.resume, a class_path's
    file) is taken from the current directory, as the command line's are."""
    raw = read_yaml_mapping(path, "a mapping of sections (data:, model:, ...)", "configs/quickstart.yaml") if path is not None else {}
    return config_from_dict(raw, overrides, base_dir=Path(path).resolve().parent if path is not None else None)


def read_yaml_mapping(path: str | Path, what: str, example: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (safe_load only), with errors that
    say which file and what it should hold."""
    path = Path(path)
    if not path.is_file():
        raise DistTrainError(f"config file {str(path)!r} does not exist; pass the path of a YAML file, e.g. {example}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DistTrainError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise DistTrainError(f"config file {str(path)!r} must hold {what}, got {type(loaded).__name__}")
    return loaded


def config_from_dict(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = (),
                     base_dir: Path | None = None) -> Config:
    """The config tree from a plain mapping (left untouched) plus `a.b=value`
    overrides. A class_path naming a file ("nets.py:Net") is made absolute
    against the current directory (every relative path is), so every worker,
    on every node, finds the same file; `base_dir`, the config file's
    directory, is only named in the error when the file is there instead."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        _apply_override(raw, item)
    config = build_section(Config, raw)
    config = _absolute_class_paths(config, base_dir)
    validate(config)
    return config


def _absolute_class_paths(config: Config, config_dir: Path | None) -> Config:
    def absolute(key: str, class_path: str) -> str:
        if ":" not in class_path:
            return class_path  # a dotted import path
        file, name = class_path.rsplit(":", 1)
        if not file:
            return class_path
        found = (Path.cwd() / file).resolve()
        beside = (config_dir / file).resolve() if config_dir is not None else found
        if not found.is_file() and beside.is_file() and beside != found:  # the rule of dist-train before 0.25
            shown = os.path.relpath(beside)
            raise ConfigError(key, f"file {file!r} is not in the current directory {Path.cwd()} (relative paths in a "
                              "config are taken from the directory the command runs in, as on the command line); "
                              f"the config file's directory has one", f"write {key}: {shown}:{name}")
        return f"{found}:{name}"

    return dataclasses.replace(
        config, model=dataclasses.replace(config.model, class_path=absolute("model.class_path", config.model.class_path)),
        data=dataclasses.replace(config.data, class_path=absolute("data.class_path", config.data.class_path)))


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML, JSON and W&B."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def unused_keys(config: Config) -> set[str]:
    """The dotted keys the chosen options never read: the synthetic source's
    sizes for the digits, the built-in networks' keys beside a model of one's
    own (model.class_path), DeepSpeed's keys under DDP, ... Their values make
    no difference to the run."""
    d, m, o, sc = config.data, config.model, config.optim, config.schedule
    built_in_model = ["name", "hidden_sizes", "activation", "dropout", "batch_norm", "init", "init_std", "init_bound",
                      "init_value", "channels"]
    unused = {
        "data": ([] if d.source == "synthetic" else ["num_samples", "num_features", "num_classes"])
        + ([] if d.source == "shards" else ["path", "shuffle_buffer", "verify"])
        + ([] if d.source in ("shards", "custom") else ["loader_workers"])
        + ([] if d.source == "custom" else ["class_path", "init_args"])
        # shards were split by `prepare`; a custom source gives its own splits
        + (["val_fraction", "test_fraction", "split_seed"] if d.source in ("shards", "custom") else []),
        # a model of one's own is built from init_args alone (it initializes itself)
        "model": built_in_model if m.class_path else
        ["class_path", "init_args"] + ([] if m.name == "mlp" else ["hidden_sizes", "batch_norm"])
        + ([] if m.name == "cnn" else ["channels"])
        + ([] if m.init == "gaussian" else ["init_std"]) + ([] if m.init == "uniform" else ["init_bound"])
        + ([] if m.init == "constant" else ["init_value"]),
        "optim": ([] if o.name in ("sgd", "rmsprop") else ["momentum"]) + ([] if o.name == "sgd" else ["nesterov"])
        + ([] if o.name in ("adam", "adamw") else ["betas"]) + ([] if o.name == "rmsprop" else ["alpha"])
        + ([] if o.name == "adadelta" else ["rho"]) + (["eps"] if o.name == "sgd" else []),
        "schedule": ([] if sc.name == "step" else ["step_size_epochs"])
        + ([] if sc.name == "multistep" else ["milestones_epochs"])
        + ([] if sc.name in ("step", "multistep", "exponential") else ["gamma"])
        + ([] if sc.name == "cosine" else ["min_lr"])
        + ([] if sc.name == "plateau" else ["factor", "patience", "threshold", "monitor"])
        + ([] if sc.scale_lr else ["reference_batch_size"]),
        "early_stopping": [] if config.early_stopping.enabled else
        ["monitor", "mode", "patience", "min_delta", "restore_best"],
        "strategy": ([] if config.strategy.name == "deepspeed" else
                     ["zero_stage", "offload_optimizer", "deepspeed_config"])
        + ([] if config.strategy.name in ("deepspeed", "fsdp") else ["offload_params"])
        + ([] if config.strategy.name == "fsdp" else ["fsdp_modules", "reshard_after_forward"])
        + (["bucket_cap_mb"] if config.strategy.name in ("deepspeed", "single", "fsdp") else []),
    }
    return {f"{section}.{key}" for section, keys in unused.items() for key in keys}


def relevant_dict(config: Config) -> dict[str, Any]:
    """`to_dict` without `unused_keys`: what the run uses, as a person
    comparing runs in W&B or reading the run's config.yaml wants to see it.
    Loaded again (its left-out keys at their defaults), it is the same run."""
    tree = to_dict(config)
    for key in unused_keys(config):
        section, name = key.split(".")
        tree[section].pop(name, None)
    return tree


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def replace(config: Config, **dotted: Any) -> Config:
    """A copy with dotted keys changed (`replace(cfg, **{"optim.lr": 0.1})`), validated again."""
    raw = to_dict(config)
    for key, value in dotted.items():
        _set_dotted(raw, key, value)
    return config_from_dict(raw)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(item, "an override must look like key=value", "e.g. optim.lr=0.01 or model.hidden_sizes=[128,64]")
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    _set_dotted(raw, key, value)


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), "is a value, not a section")
        node = child
    node[parts[-1]] = value


# names a user may know from elsewhere (the course) for a value we spell otherwise
# (and any name in capitals, "ELU"): named in the error rather than accepted, so
# each setting has one spelling
OTHER_NAMES = {"explin": "elu"}

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def build_section(cls: type, raw: Any, prefix: str = "") -> Any:
    """A frozen dataclass from a mapping, checked against its type hints: an
    unknown key, a wrong type or a value outside a Literal set raises a
    ConfigError naming the dotted path (`prefix` + key)."""
    if not isinstance(raw, dict):
        raise ConfigError(prefix.rstrip(".") or "CONFIG", f"must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = prefix + str(unknown[0])
        raise ConfigError(key, "unknown key", f"allowed keys here: {', '.join(fields)}")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _convert(hints[name], value, prefix + name)
    return cls(**kwargs)


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build_section(hint, {} if value is None else value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if origin is Literal:
        if value not in args:
            ours = OTHER_NAMES.get(value.lower(), value.lower()) if isinstance(value, str) else None
            known = f"{value} is written {ours} here; " if ours in args else ""
            raise ConfigError(key, f"{value!r} is not allowed", f"{known}choose one of: {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(key, f"expected a list of {len(args)} values, got {list(value)!r}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        # YAML 1.1 reads `1e-3` (no dot) as a string; accept numeric text.
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {key}")  # internal: a field with a type we do not load


# -------------------------------------------------------------- validation

#: keys of a DeepSpeed config (strategy.deepspeed_config) that our config sets; the raw section may not
DEEPSPEED_OWNED = {"train_batch_size": "train.global_batch_size", "train_micro_batch_size_per_gpu": "train.grad_accum_steps",
         "gradient_accumulation_steps": "train.grad_accum_steps", "gradient_clipping": "train.grad_clip_norm",
         "fp16": "train.precision", "bf16": "train.precision", "scheduler": "schedule (ours is used)"}
DEEPSPEED_OWNED_ZERO = {"stage": "strategy.zero_stage", "offload_optimizer": "strategy.offload_optimizer",
              "offload_param": "strategy.offload_params"}



def validate(config: Config) -> None:
    """Cross-field and range rules that do not depend on the number of workers."""
    d, m, o, t = config.data, config.model, config.optim, config.train
    _positive("optim.lr", o.lr)
    _at_least("optim.weight_decay", o.weight_decay, 0.0)
    _at_least("optim.momentum", o.momentum, 0.0)
    if o.momentum >= 1.0:
        raise ConfigError("optim.momentum", f"{o.momentum!r} must be below 1",
                          "at 1 or more the velocity never decays and training diverges; 0.9 is usual")
    _positive("optim.eps", o.eps)
    for i, beta in enumerate(o.betas):
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"optim.betas[{i}]", f"{beta!r} is outside [0, 1)")
    if not 0.0 <= o.alpha <= 1.0:
        raise ConfigError("optim.alpha", f"{o.alpha!r} is outside [0, 1]")
    if not 0.0 <= o.rho <= 1.0:
        raise ConfigError("optim.rho", f"{o.rho!r} is outside [0, 1]")
    if o.nesterov and (o.name != "sgd" or o.momentum <= 0):
        raise ConfigError("optim.nesterov", "needs optim.name=sgd and optim.momentum > 0", "set optim.momentum=0.9")
    if o.momentum > 0 and o.name not in ("sgd", "rmsprop"):
        raise ConfigError("optim.momentum", f"{o.momentum!r} does nothing with optim.name={o.name}", "momentum applies to sgd and rmsprop; remove it")
    _positive("train.epochs", t.epochs)
    if t.max_steps is not None:
        _positive("train.max_steps", t.max_steps)
    _positive("train.global_batch_size", t.global_batch_size)
    _positive("train.grad_accum_steps", t.grad_accum_steps)
    _positive("train.log_every_steps", t.log_every_steps)
    if t.grad_clip_norm is not None:
        _positive("train.grad_clip_norm", t.grad_clip_norm)
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError("model.dropout", f"{m.dropout!r} is outside [0, 1)")
    for i, size in enumerate(m.hidden_sizes):
        _positive(f"model.hidden_sizes[{i}]", size)
    for i, size in enumerate(m.channels):
        _positive(f"model.channels[{i}]", size)
    _positive("model.init_std", m.init_std)
    _positive("model.init_bound", m.init_bound)
    for key, value in (("model.init_std", m.init_std), ("model.init_bound", m.init_bound),
                       ("model.init_value", m.init_value)):
        if not math.isfinite(value):
            raise ConfigError(key, f"{value!r} is not a finite number", "every weight would start at inf or nan")
    for key, frac in (("data.val_fraction", d.val_fraction), ("data.test_fraction", d.test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ConfigError(key, f"{frac!r} is outside (0, 1)")
    if d.val_fraction + d.test_fraction >= 1.0:
        raise ConfigError("data.test_fraction", "validation and test fractions leave no training data")
    _positive("data.num_samples", d.num_samples)
    _at_least("data.loader_workers", d.loader_workers, 0)
    _positive("data.shuffle_buffer", d.shuffle_buffer)
    _check_class_path("data", d.class_path, d.init_args, needed=d.source == "custom",
                      hint="set data.source=custom to use data.class_path")
    _check_class_path("model", m.class_path, m.init_args)
    if m.class_path:
        builtin = ModelConfig()
        for key in ("name", "hidden_sizes", "activation", "dropout", "batch_norm", "init", "init_std", "init_bound",
                    "init_value", "channels"):
            if getattr(m, key) != getattr(builtin, key):
                raise ConfigError(f"model.{key}", "is set but model.class_path builds the model, which never reads it",
                                  f"pass it to your model in model.init_args, or remove model.class_path")
    if d.source == "shards" and not d.path:
        raise ConfigError("data.path", "is empty but data.source is 'shards'",
                          "prepare shards with `dist-train prepare digits --out data/prepared/digits` and set data.path to that directory")
    if d.source != "shards" and d.path:
        raise ConfigError("data.path", f"is set but data.source is {d.source!r}, which does not read it", "set data.source=shards")
    _positive("data.num_features", d.num_features)
    if d.num_classes < 2:
        raise ConfigError("data.num_classes", f"{d.num_classes!r} must be at least 2")
    _positive("train.stop_check_every_steps", t.stop_check_every_steps)
    sc, es, ck = config.schedule, config.early_stopping, config.checkpoint
    _at_least("schedule.warmup_steps", sc.warmup_steps, 0)
    _positive("schedule.step_size_epochs", sc.step_size_epochs)
    _positive("schedule.gamma", sc.gamma)
    _at_least("schedule.min_lr", sc.min_lr, 0.0)
    if not 0.0 < sc.factor < 1.0:
        raise ConfigError("schedule.factor", f"{sc.factor!r} is outside (0, 1)", "0.5 halves the learning rate")
    _at_least("schedule.patience", sc.patience, 0)
    _positive("schedule.reference_batch_size", sc.reference_batch_size)
    if list(sc.milestones_epochs) != sorted(set(sc.milestones_epochs)):
        raise ConfigError("schedule.milestones_epochs", f"{list(sc.milestones_epochs)} must be increasing")
    if sc.name == "multistep" and not sc.milestones_epochs:
        raise ConfigError("schedule.milestones_epochs", "is empty but schedule.name is multistep", "e.g. [10, 20]")
    _at_least("early_stopping.patience", es.patience, 1)
    _at_least("early_stopping.min_delta", es.min_delta, 0.0)
    _at_least("checkpoint.every_steps", ck.every_steps, 0)
    _at_least("checkpoint.every_epochs", ck.every_epochs, 0)
    _positive("checkpoint.keep_last", ck.keep_last)
    if not config.wandb.project:
        raise ConfigError("wandb.project", "is empty", "name the W&B project, e.g. dist-train")
    if not config.run.resume:
        raise ConfigError("run.resume", "is empty", "auto, never, or the path of a checkpoint directory")
    _positive("dist.timeout_s", config.dist.timeout_s)
    _positive("dist.start_timeout_s", config.dist.start_timeout_s)
    hang = config.dist.hang_timeout_s
    if hang is not None:
        _at_least("dist.hang_timeout_s", hang, 0.0)
        if hang >= config.dist.timeout_s:
            raise ConfigError("dist.hang_timeout_s", f"{hang:g} is not below dist.timeout_s={config.dist.timeout_s:g}",
                              "the watchdog must report a stall before a collective gives up: lower "
                              "dist.hang_timeout_s or raise dist.timeout_s (0 switches the watchdog off)")
    _positive("strategy.bucket_cap_mb", config.strategy.bucket_cap_mb)
    st = config.strategy
    if not 0 <= st.zero_stage <= 3:
        raise ConfigError("strategy.zero_stage", f"{st.zero_stage!r} is not a ZeRO stage", "choose 0, 1, 2 or 3")
    if st.name != "deepspeed":
        for key, value, default in (("zero_stage", st.zero_stage, 2), ("offload_optimizer", st.offload_optimizer, "none"),
                                    ("offload_params", st.offload_params, "none"),
                                    ("deepspeed_config", st.deepspeed_config, {})):
            if value != default and not (key == "offload_params" and st.name == "fsdp"):
                raise ConfigError(f"strategy.{key}", f"is set but strategy.name is {st.name!r}, which does not read it",
                                  "set strategy.name=deepspeed" + (" (fsdp reads only offload_params)"
                                                                   if st.name == "fsdp" else ""))
    if st.name != "fsdp":
        for key, value, default in (("fsdp_modules", st.fsdp_modules, ()),
                                    ("reshard_after_forward", st.reshard_after_forward, True)):
            if value != default:
                raise ConfigError(f"strategy.{key}", f"is set but strategy.name is {st.name!r}, which does not read it",
                                  "set strategy.name=fsdp")
    if st.name == "fsdp" and config.dist.device == "cpu" and st.offload_params != "none":
        raise ConfigError("strategy.offload_params", "cpu offload with fsdp needs a GPU (on a CPU the parameters are in "
                          "host memory already)", "drop strategy.offload_params, or run on GPUs")
    if st.name == "fsdp" and es.enabled and es.restore_best:
        raise ConfigError("early_stopping.restore_best", "is not supported with strategy.name=fsdp (the weights are "
                          "sharded)", "keep the best checkpoint instead: checkpoint.keep_best=true (the default)")
    for key, ours in DEEPSPEED_OWNED.items():
        if key in st.deepspeed_config:
            raise ConfigError(f"strategy.deepspeed_config.{key}", "is derived from our config", f"set {ours} instead")
    zero_section = st.deepspeed_config.get("zero_optimization", {})
    for key in zero_section if isinstance(zero_section, dict) else ():
        if key in DEEPSPEED_OWNED_ZERO:
            raise ConfigError(f"strategy.deepspeed_config.zero_optimization.{key}", "is derived from our config",
                              f"set {DEEPSPEED_OWNED_ZERO[key]} instead")
    if t.compile and st.name == "deepspeed":
        raise ConfigError("train.compile", "is not supported with strategy.name=deepspeed",
                          "use strategy.name=ddp (or auto) to compile the model")
    if st.offload_params != "none" and st.zero_stage != 3 and st.name != "fsdp":
        raise ConfigError("strategy.offload_params", "needs strategy.zero_stage=3 (only stage 3 shards parameters)")
    if st.offload_optimizer != "none" and st.zero_stage == 0:
        raise ConfigError("strategy.offload_optimizer", "needs strategy.zero_stage of 1 or more")
    if st.name == "deepspeed" and st.zero_stage == 3 and es.enabled and es.restore_best:
        raise ConfigError("early_stopping.restore_best", "is not supported with strategy.zero_stage=3 (the weights "
                          "are sharded)", "keep the best checkpoint instead: checkpoint.keep_best=true (the default)")


def _check_class_path(section: str, class_path: str, init_args: dict, needed: bool = False, hint: str = "") -> None:
    if needed and not class_path:
        raise ConfigError(f"{section}.class_path", "is empty but data.source is 'custom'",
                          "name the function returning your train, validation and test datasets, e.g. "
                          "data.class_path=mydata.py:make_splits")
    if class_path and section == "data" and not needed:
        raise ConfigError(f"{section}.class_path", "is set but data.source is not 'custom'", hint)
    if init_args and not class_path:
        raise ConfigError(f"{section}.init_args", f"is set but {section}.class_path is empty, so nothing reads it",
                          f"name what to call in {section}.class_path")
    if class_path and not re.fullmatch(r"[\w.]+|[^:]+\.py:\w+", class_path):
        raise ConfigError(f"{section}.class_path", f"{class_path!r} is neither an import path nor a file and a name",
                          "use package.module.Name, or file.py:Name (a relative file: from the current directory)")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, f"{value!r} must be greater than 0")


def _at_least(key: str, value: float, low: float) -> None:
    if not value >= low:
        raise ConfigError(key, f"{value!r} must be at least {low}")
