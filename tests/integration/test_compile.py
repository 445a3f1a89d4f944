"""train.compile: the model through torch.compile trains as without it (one
process on the CPU: inductor builds C++ kernels, which takes seconds)."""

import pytest
import torch

from dist_train.config import load_config
from dist_train.env import DistEnv
from tests.helpers import build_trainer

pytestmark = pytest.mark.slow  # tens of seconds of compiling on 2 cores


def test_a_compiled_model_trains_as_the_plain_one_and_keeps_its_state_dict_keys():
    results = {}
    for compiled in (False, True):
        cfg = load_config(None, ["data.source=synthetic", "data.num_samples=300", "train.epochs=2", "model.dropout=0.0",
                                 "model.hidden_sizes=[16]", "dist.device=cpu", f"train.compile={str(compiled).lower()}"])
        trainer = build_trainer(cfg, DistEnv())
        result = trainer.fit()
        results[compiled] = {k: v.detach().clone() for k, v in result.network.state_dict().items()}
        if compiled:
            assert type(trainer.strategy.train_model).__name__ == "OptimizedModule"
    assert results[False].keys() == results[True].keys()  # no "_orig_mod." in checkpoints or exports
    for key, value in results[False].items():
        assert torch.allclose(value, results[True][key], atol=1e-5), key
