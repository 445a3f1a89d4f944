"""fp16 under DeepSpeed on CPU is refused, naming the alternatives."""

import pytest
import torch

from dist_train.config import load_config
from dist_train.env import DistEnv
from dist_train.errors import ConfigError
from dist_train.resolve import resolve
from dist_train.strategy import Precision
from tests.helpers import SMALL_FP16


def test_fp16_under_deepspeed_on_cpu_is_refused_with_the_alternatives():
    pytest.importorskip("deepspeed")
    from dist_train.strategy.deepspeed import DeepSpeedStrategy

    cfg = load_config(None, SMALL_FP16 + ["strategy.name=deepspeed"])
    with pytest.raises(ConfigError, match="train.precision=bf16"):
        DeepSpeedStrategy(cfg, DistEnv(), resolve(cfg, 1), torch.nn.Linear(2, 2), None, Precision("fp16", "cpu"))
