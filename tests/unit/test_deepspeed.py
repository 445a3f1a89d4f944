"""The deepspeed strategy's configuration, checked when the config is loaded:
what the raw DeepSpeed section may not set, and DeepSpeed keys without the
deepspeed strategy."""

import pytest

from dist_train.config import load_config
from dist_train.errors import ConfigError
from dist_train.resolve import resolve
from tests.helpers import DEEPSPEED_BASE as BASE


deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is an optional extra: pip install -e '.[deepspeed]'")


def test_raw_deepspeed_section_cannot_set_what_our_config_owns():
    """Refused when the config is loaded, so `launch` refuses it before any worker starts."""
    from dist_train.strategy.deepspeed import deepspeed_config

    with pytest.raises(ConfigError, match="strategy.deepspeed_config.gradient_clipping.*set train.grad_clip_norm"):
        load_config(None, BASE + ["strategy.name=deepspeed", "strategy.deepspeed_config={gradient_clipping: 1.0}"])
    with pytest.raises(ConfigError, match="zero_optimization.stage.*set strategy.zero_stage"):
        load_config(None, BASE + ["strategy.name=deepspeed", "strategy.deepspeed_config={zero_optimization: {stage: 3}}"])
    cfg = load_config(None, BASE + ["strategy.name=deepspeed", "strategy.zero_stage=1", "train.grad_accum_steps=2",
                                    "strategy.deepspeed_config={zero_optimization: {reduce_bucket_size: 1000}}"])
    ds = deepspeed_config(cfg, resolve(cfg, 2))
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (32, 8, 2)
    assert ds["zero_optimization"] == {"stage": 1, "reduce_bucket_size": 1000}
    assert ds["gradient_clipping"] == 0.5


def test_deepspeed_keys_without_the_deepspeed_strategy_are_refused():
    with pytest.raises(ConfigError, match="strategy.zero_stage.*set strategy.name=deepspeed"):
        load_config(None, BASE + ["strategy.zero_stage=3"])
