"""The course's initializers and activations by name (issue 25): each one is
torch's own nn.init function or nn functional, bit for bit; the names configs
used before draw the same weights as they always did."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dist_train.config import ModelConfig, load_config
from dist_train.errors import ConfigError
from dist_train.models import CNN, MLP, build_model

ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "selu", "elu", "gelu", "identity"]


def _shell(name, activation):
    """The network build_model makes, before its initialization (constructing it draws from the RNG too)."""
    if name == "mlp":
        return MLP(7, (6, 9), 3, activation=activation)
    return CNN(2, (3, 5), 3, activation=activation)


def _build(name, init, activation, seed, **params):
    cfg = ModelConfig(name=name, hidden_sizes=(6, 9), channels=(3, 5), init=init, activation=activation, **params)
    torch.manual_seed(seed)
    return build_model(cfg, (7,) if name == "mlp" else (2, 6, 6), 3)


def _assert_same_weights(built, expected, what):
    got, want = built.state_dict(), expected.state_dict()
    assert list(got) == list(want)
    for key in got:
        assert torch.equal(got[key], want[key]), f"{what}: {key} differs"


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


def _old_init_weights(model, scheme, activation, std=0.01):
    """dist_train.models.init_weights as it was before issue 25 (commit 2d7c2d2), kept verbatim: a saved
    config must draw the same weights."""
    gain_name = activation
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        w = module.weight
        if scheme == "gaussian":
            nn.init.normal_(w, 0.0, std)
        elif scheme in ("xavier_uniform", "glorot_uniform"):
            gain = nn.init.calculate_gain(gain_name, 0.01) if gain_name == "leaky_relu" else nn.init.calculate_gain(gain_name)
            nn.init.xavier_uniform_(w, gain=gain)
        elif scheme == "kaiming":
            if gain_name in ("relu", "leaky_relu"):
                nn.init.kaiming_normal_(w, a=0.01 if gain_name == "leaky_relu" else 0, nonlinearity=gain_name)
            else:
                nn.init.normal_(w, 0.0, nn.init.calculate_gain(gain_name) / math.sqrt(nn.init._calculate_correct_fan(w, "fan_in")))
        elif scheme == "orthogonal":
            nn.init.orthogonal_(w, gain=nn.init.calculate_gain(gain_name) if gain_name != "leaky_relu" else nn.init.calculate_gain("leaky_relu", 0.01))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@pytest.mark.parametrize("init", ["gaussian", "xavier_uniform", "glorot_uniform", "kaiming", "orthogonal"])
def test_names_configs_used_before_draw_the_same_weights(init):
    for name in ("mlp", "cnn"):
        for activation in ("relu", "leaky_relu", "tanh", "sigmoid", "selu"):
            built = _build(name, init, activation, seed=11, init_std=0.05)
            torch.manual_seed(11)
            old = _shell(name, activation)
            with torch.no_grad():
                _old_init_weights(old, init, activation, std=0.05)
            _assert_same_weights(built, old, f"{name} {init} {activation}")


@pytest.mark.parametrize("overrides, key, words", [
    (["model.activation=explin"], "model.activation", "explin is written elu here"),
    (["model.activation=GELU"], "model.activation", "GELU is written gelu here"),
])
def test_a_name_from_elsewhere_is_refused_naming_ours(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert info.value.key == key
    assert words in str(info.value)
