"""The course's initializers and activations by name (issue 25): each one is
torch's own nn.init function or nn functional, bit for bit; the names configs
used before draw the same weights as they always did."""

import pytest
import torch
import torch.nn.functional as F

from dist_train.config import ModelConfig, load_config
from dist_train.errors import ConfigError
from dist_train.models import build_model

ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "selu", "elu", "gelu", "identity"]


def _build(name, init, activation, seed, **params):
    cfg = ModelConfig(name=name, hidden_sizes=(6, 9), channels=(3, 5), init=init, activation=activation, **params)
    torch.manual_seed(seed)
    return build_model(cfg, (7,) if name == "mlp" else (2, 6, 6), 3)


@pytest.mark.parametrize("activation, reference", [
    ("relu", F.relu), ("leaky_relu", lambda x: F.leaky_relu(x, 0.01)), ("tanh", torch.tanh),
    ("sigmoid", torch.sigmoid), ("selu", F.selu), ("elu", lambda x: F.elu(x, alpha=1.0)),
    ("gelu", lambda x: F.gelu(x, approximate="none")), ("identity", lambda x: x)])
def test_each_activation_is_torchs_own_function(activation, reference):
    mlp = _build("mlp", "kaiming", activation, seed=0)
    module = mlp.net[2]  # Flatten, Linear, activation
    x = torch.randn(64, 6) * 4  # both signs, into the saturating ends
    assert torch.equal(module(x), reference(x))
    cnn = _build("cnn", "kaiming", activation, seed=0)
    assert type(cnn.net[2]) is type(module)  # Conv, BatchNorm, activation


@pytest.mark.parametrize("overrides, key, words", [
    (["model.activation=explin"], "model.activation", "explin is written elu here"),
    (["model.activation=GELU"], "model.activation", "GELU is written gelu here"),
])
def test_a_name_from_elsewhere_is_refused_naming_ours(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert info.value.key == key
    assert words in str(info.value)
