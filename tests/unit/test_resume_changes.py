"""What a resume may change: refused, applied or ignored, per key."""

import pytest

from dist_train.config import load_config, to_dict
from dist_train.errors import DistTrainError
from dist_train.resume_changes import compare


def changes(*overrides, old=(), stored_strategy="ddp", new_strategy="ddp", mode_recorded=False):
    return compare(to_dict(load_config(None, list(old))), to_dict(load_config(None, list(overrides))),
                   stored_strategy, new_strategy, mode_recorded=mode_recorded)


@pytest.mark.parametrize("override", ["model.hidden_sizes=[128]", "model.name=cnn", "model.activation=tanh",
                                      "model.batch_norm=true", "data.source=synthetic", "data.split_seed=3",
                                      "data.normalize=none", "train.loss=mse", "train.seed=1",
                                      "train.global_batch_size=128", "optim.name=sgd", "optim.weight_decay=0.01"])
def test_changes_the_checkpoint_cannot_continue_with_are_refused(override):
    found = changes(override)
    assert [c.key for c in found.refused] == [override.split("=")[0]]
    with pytest.raises(DistTrainError, match=rf"cannot resume the run in RUN from CKPT with this config: "
                                             rf"{override.split('=')[0]} .* -> .*\(.+\)\. Pass --fresh"):
        found.raise_if_refused("RUN", "CKPT")


@pytest.mark.parametrize("override", ["optim.lr=0.01", "train.epochs=20", "schedule.name=cosine",
                                      "early_stopping.enabled=true", "checkpoint.keep_last=5", "model.dropout=0.3",
                                      "train.grad_clip_norm=1.0", "data.loader_workers=2", "wandb.mode=offline",
                                      "train.grad_accum_steps=2", "train.log_every_steps=5"])
def test_changes_a_run_can_go_on_with_are_applied_and_recorded(override):
    key, value = override.split("=")
    found = changes(override)
    assert not found.refused and [c.key for c in found.applied] == [key]
    assert key in found.record() and found.line().startswith(f"changed settings: {key} ")


def test_initialization_settings_are_reported_as_having_no_effect():
    found = changes("model.init=orthogonal")
    assert not found.refused and not found.applied
    assert "no effect on a resumed run" in found.line() and "model.init 'kaiming' -> 'orthogonal'" in found.line()


def test_the_strategy_state_layout_and_weight_decay_switching_on():
    assert [c.key for c in changes(stored_strategy="ddp", new_strategy="deepspeed").refused] == ["strategy.name"]
    assert not changes(stored_strategy="single", new_strategy="ddp").changes  # 1 -> 2 workers: same layout
    assert not changes("optim.weight_decay=0.02", old=["optim.weight_decay=0.01"]).refused  # a new value: applied
    precision = changes("train.precision=bf16", stored_strategy="deepspeed", new_strategy="deepspeed")
    assert [c.key for c in precision.refused] == ["train.precision"]
    assert not changes("train.precision=bf16").refused  # under DDP: autocast only, nothing stored


def test_where_to_start_and_the_run_directory_are_not_compared():
    assert not changes("run.resume=never", "run.dir=elsewhere").changes


def test_every_config_field_says_what_a_resume_may_do_with_it():
    import dataclasses

    from dist_train.config import Config
    for section in dataclasses.fields(Config):
        for item in dataclasses.fields(section.default_factory):
            rule = item.metadata.get("resume")
            assert rule in ("refused", "applied", "ignored"), (
                f"{section.name}.{item.name} has no resume rule: declare it with fixed(), changeable() or at_start()")
            if rule != "applied":
                assert item.metadata["why"], f"{section.name}.{item.name} is {rule} without a reason"


def test_keys_an_older_stored_config_lacks_are_no_change_at_their_default():
    stored = to_dict(load_config(None))
    del stored["dist"]["check_collectives"], stored["optim"]["rho"]
    assert compare(stored, to_dict(load_config(None)), "ddp", "ddp").changes == ()
    found = compare(stored, to_dict(load_config(None, ["dist.check_collectives=true"])), "ddp", "ddp")
    assert [c.key for c in found.applied] == ["dist.check_collectives"]


def test_a_key_this_version_no_longer_has_is_reported_as_having_no_effect():
    stored = to_dict(load_config(None))
    stored["train"]["retired_option"] = 3
    found = compare(stored, to_dict(load_config(None)), "ddp", "ddp")
    assert [(c.key, c.kind) for c in found.changes] == [("train.retired_option", "ignored")]


@pytest.mark.parametrize("named", ["per_channel", "per_feature"])
def test_auto_against_a_named_mode_is_left_to_the_checkpoints_record_of_the_mode_its_run_used(named):
    # a checkpoint saved before auto (its config says per_channel), resumed by today's default
    assert not changes(old=[f"data.normalize={named}"], mode_recorded=True).changes
    assert not changes(f"data.normalize={named}", mode_recorded=True).changes  # and back
    # a checkpoint without that record (before predictor.pt): the field's rule, refused
    assert [c.key for c in changes(old=[f"data.normalize={named}"]).refused] == ["data.normalize"]
    # auto never gives none: refused either way
    assert [c.key for c in changes("data.normalize=none", mode_recorded=True).refused] == ["data.normalize"]
    assert [c.key for c in changes(old=["data.normalize=none"], mode_recorded=True).refused] == ["data.normalize"]


def test_loading_a_checkpoint_of_another_mode_is_refused_with_the_setting_to_go_on():
    from dist_train.resume_changes import check_normalize

    check_normalize("per_channel", "per_channel")
    with pytest.raises(DistTrainError, match=r"data.normalize gives 'per_feature' for these inputs .* the checkpoint's "
                                             r"run normalized them 'per_channel' .* Set data.normalize=per_channel to go "
                                             r"on with it, or pass --fresh"):
        check_normalize("per_channel", "per_feature")
