"""Config: YAML + overrides into one typed, frozen tree; every mistake named."""

import dataclasses

import pytest
import yaml

from dist_train.config import Config, config_from_dict, dump_yaml, load_config, replace
from dist_train.errors import ConfigError, DistTrainError
from dist_train.resolve import resolve
from tests.conftest import REPO


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_build_a_typed_tree(tmp_path):
    path = write(tmp_path, "optim:\n  name: sgd\n  lr: 1e-3\n  momentum: 0.9\nmodel:\n  hidden_sizes: [32, 16]\n")
    cfg = load_config(path, ["optim.lr=0.05", "model.hidden_sizes=[8]", "train.grad_clip_norm=1"])
    assert cfg.optim.name == "sgd" and cfg.optim.momentum == 0.9
    assert cfg.optim.lr == 0.05 and isinstance(cfg.optim.lr, float)
    assert cfg.model.hidden_sizes == (8,)
    assert cfg.train.grad_clip_norm == 1.0
    assert load_config(path).optim.lr == 1e-3  # YAML 1.1 reads 1e-3 as text; accepted as a number


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "overrides, key, words",
    [
        (["optim.lrr=0.1"], "optim.lrr", "unknown key"),
        (["optimizer.lr=0.1"], "optimizer", "unknown key"),
        (["optim.lr=fast"], "optim.lr", "expected a number"),
        (["train.epochs=2.5"], "train.epochs", "expected an integer"),
        (["model.batch_norm=maybe"], "model.batch_norm", "expected true or false"),
        (["optim.lr=-0.1"], "optim.lr", "must be greater than 0"),
        (["optim.lr=0"], "optim.lr", "must be greater than 0"),
        (["optim.name=lbfgs"], "optim.name", "choose one of: sgd, adagrad, adadelta, rmsprop, adam, adamw"),
        (["model.activation=swish"], "model.activation", "not allowed"),
        (["model.dropout=1.0"], "model.dropout", "outside [0, 1)"),
        (["optim.momentum=0.9"], "optim.momentum", "does nothing with optim.name=adam"),
        (["optim.name=sgd", "optim.momentum=1.0"], "optim.momentum", "must be below 1"),
        (["optim.name=rmsprop", "optim.momentum=1.5"], "optim.momentum", "velocity never decays"),
        (["optim.name=adam", "optim.nesterov=true"], "optim.nesterov", "needs optim.name=sgd"),
        (["model.hidden_sizes=[64,0]"], "model.hidden_sizes[1]", "greater than 0"),
        (["optim.betas=[0.9]"], "optim.betas", "list of 2 values"),
        (["train.global_batch_size=0"], "train.global_batch_size", "greater than 0"),
        (["lr"], "lr", "key=value"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert info.value.key == key
    assert f"'{key}'" in str(info.value) and words in str(info.value)


def test_unknown_key_in_yaml_names_its_path_and_the_allowed_keys(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "train:\n  epochs: 3\n  batch_size: 32\n"))
    assert info.value.key == "train.batch_size"
    assert "global_batch_size" in str(info.value)  # the hint lists what is allowed


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(DistTrainError, match="config file '.*nope.yaml' does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(DistTrainError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(DistTrainError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_global_batch_must_divide_by_workers_times_accumulation():
    cfg = load_config(None, ["train.global_batch_size=30", "train.grad_accum_steps=2"])
    assert resolve(cfg, 1).micro_batch_size == 15
    assert resolve(cfg, 3).per_rank_batch_size == 10 and resolve(cfg, 3).micro_batch_size == 5
    with pytest.raises(ConfigError) as info:
        resolve(cfg, 2)
    assert info.value.key == "train.global_batch_size"
    assert "30 is not divisible by 2 worker(s) x 2 accumulation step(s) = 4" in str(info.value)
    assert "28, 32" in str(info.value)


def test_single_strategy_refuses_several_workers():
    cfg = load_config(None, ["strategy.name=single"])
    with pytest.raises(ConfigError, match="'single' cannot run 2 workers"):
        resolve(cfg, 2)
    assert resolve(load_config(None), 2).strategy == "ddp"
    assert resolve(load_config(None), 1).strategy == "single"


def test_dump_round_trips_and_replace_revalidates():
    cfg = load_config(None, ["model.hidden_sizes=[10,20]", "optim.betas=[0.8,0.9]"])
    again = config_from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg
    assert replace(cfg, **{"optim.lr": 0.5}).optim.lr == 0.5
    with pytest.raises(ConfigError):
        replace(cfg, **{"optim.lr": -1.0})


@pytest.mark.parametrize("name", ["quickstart.yaml", "digits_mlp.yaml", "digits_cnn.yaml", "cpu_test.yaml", "fashion_mnist_mlp.yaml", "fashion_mnist_small.yaml", "diabetes.yaml", "wine.yaml"])
def test_shipped_configs_load(name):
    assert isinstance(load_config(f"{REPO}/configs/{name}"), Config)


def test_the_wandb_config_leaves_out_keys_the_chosen_options_never_read():
    from dist_train.config import relevant_dict

    digits = relevant_dict(load_config(f"{REPO}/configs/quickstart.yaml"))
    assert "num_samples" not in digits["data"] and "path" not in digits["data"]  # synthetic's and shards' keys
    assert "zero_stage" not in digits["strategy"] and "channels" not in digits["model"]
    assert "momentum" not in digits["optim"] and digits["optim"]["betas"] == [0.9, 0.999]
    synthetic = relevant_dict(load_config(None, ["data.source=synthetic", "strategy.name=deepspeed", "optim.name=sgd"]))
    assert synthetic["data"]["num_samples"] == 512 and synthetic["strategy"]["zero_stage"] == 2
    assert synthetic["optim"]["momentum"] == 0.0 and "betas" not in synthetic["optim"]
    assert "class_path" not in digits["model"] and "class_path" not in digits["data"]  # a built-in model and data
    own = relevant_dict(load_config(None, ["data.source=custom", "data.class_path=mydata.make",
                                           "model.class_path=nets.Net", "model.init_args={width: 4}"]))
    assert own["model"] == {"class_path": "nets.Net", "init_args": {"width": 4}, "sync_batchnorm": False}
    assert own["data"]["loader_workers"] == 1 and own["data"]["class_path"] == "mydata.make"  # custom items' readers
    assert "val_fraction" not in own["data"] and "path" not in own["data"]  # a custom source gives its own splits
