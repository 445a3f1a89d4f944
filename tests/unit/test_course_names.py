"""The course's initializers and activations by name (issue 25): each one is
torch's own nn.init function or nn functional, bit for bit; the names configs
used before draw the same weights as they always did."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dist_train.config import ModelConfig, load_config, relevant_dict
from dist_train.errors import ConfigError
from dist_train.models import CNN, MLP, build_model

ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "selu", "elu", "gelu", "identity"]
# the gain each activation gives xavier and orthogonal, and the nonlinearity it gives kaiming: torch's
# where torch has one; ELU and GELU take ReLU's, identity is linear
GAIN = {"relu": math.sqrt(2), "leaky_relu": math.sqrt(2 / (1 + 0.01**2)), "tanh": 5 / 3, "sigmoid": 1.0,
        "selu": 0.75, "elu": math.sqrt(2), "gelu": math.sqrt(2), "identity": 1.0}
KAIMING = {"relu": ("relu", 0), "leaky_relu": ("leaky_relu", 0.01), "tanh": ("tanh", 0), "sigmoid": ("sigmoid", 0),
           "selu": ("selu", 0), "elu": ("relu", 0), "gelu": ("relu", 0), "identity": ("linear", 0)}
PARAMS = {"init_std": 0.07, "init_bound": 0.3, "init_value": 0.25}


def _torch_init(init, activation):
    """What `init` should do to one weight, written with torch's functions alone."""
    gain = GAIN[activation]
    nonlinearity, a = KAIMING[activation]
    return {
        "constant": lambda w: nn.init.constant_(w, PARAMS["init_value"]),
        "uniform": lambda w: nn.init.uniform_(w, -PARAMS["init_bound"], PARAMS["init_bound"]),
        "gaussian": lambda w: nn.init.normal_(w, 0.0, PARAMS["init_std"]),
        "xavier_uniform": lambda w: nn.init.xavier_uniform_(w, gain=gain),
        "glorot_uniform": lambda w: nn.init.xavier_uniform_(w, gain=gain),
        "xavier_normal": lambda w: nn.init.xavier_normal_(w, gain=gain),
        "glorot_normal": lambda w: nn.init.xavier_normal_(w, gain=gain),
        "kaiming": lambda w: nn.init.kaiming_normal_(w, a=a, mode="fan_in", nonlinearity=nonlinearity),
        "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, a=a, mode="fan_in", nonlinearity=nonlinearity),
        "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, a=a, mode="fan_in", nonlinearity=nonlinearity),
        "identity": lambda w: nn.init.eye_(w) if w.dim() == 2 else nn.init.dirac_(w),
        "orthogonal": lambda w: nn.init.orthogonal_(w, gain=gain),
    }[init]


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


INITS = ["constant", "uniform", "gaussian", "xavier_uniform", "glorot_uniform", "xavier_normal", "glorot_normal",
         "kaiming", "kaiming_normal", "kaiming_uniform", "identity", "orthogonal"]


@pytest.mark.parametrize("init", INITS)
def test_each_initializer_is_torchs_own_function(init):
    for name in ("mlp", "cnn"):
        for activation in ACTIVATIONS:
            built = _build(name, init, activation, seed=3, **PARAMS)
            torch.manual_seed(3)
            expected = _shell(name, activation)
            with torch.no_grad():
                for module in expected.modules():
                    if isinstance(module, (nn.Linear, nn.Conv2d)):
                        _torch_init(init, activation)(module.weight)
                        nn.init.zeros_(module.bias)
            _assert_same_weights(built, expected, f"{name} {init} {activation}")


def test_the_config_lists_every_initializer_and_activation_tested_here():
    import typing

    from dist_train.config import Activation, Init

    assert sorted(typing.get_args(Init)) == sorted(INITS)
    assert sorted(typing.get_args(Activation)) == sorted(ACTIVATIONS)


def test_identity_init_passes_inputs_through():
    mlp = _build("mlp", "identity", "identity", seed=0)
    first, last = mlp.net[1].weight, mlp.net[-1].weight  # 7 -> 6 and 9 -> 3: not square
    assert torch.equal(first, torch.eye(6, 7)) and torch.equal(last, torch.eye(3, 9))
    cnn = _build("cnn", "identity", "identity", seed=0)
    conv = cnn.net[0]  # 2 -> 3 channels, 3x3, padding 1
    x = torch.randn(4, 2, 6, 6)
    out = conv(x)
    assert torch.equal(out[:, :2], x) and torch.count_nonzero(out[:, 2]) == 0


def test_the_new_parameters_shape_the_weights():
    w = _build("mlp", "uniform", "relu", seed=0, init_bound=0.02).net[1].weight
    assert w.abs().max() <= 0.02 and w.abs().max() > 0.015
    w = _build("mlp", "constant", "relu", seed=0, init_value=-0.5).net[1].weight
    assert torch.all(w == -0.5)


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
    (["model.init=uniform", "model.init_bound=0"], "model.init_bound", "greater than 0"),
    (["model.init_bound=-0.1"], "model.init_bound", "greater than 0"),
    (["model.init=uniform", "model.init_bound=.inf"], "model.init_bound", "not a finite number"),
    (["model.init=constant", "model.init_value=.nan"], "model.init_value", "not a finite number"),
    (["model.init_std=.inf"], "model.init_std", "not a finite number"),
    (["model.init=he_normal"], "model.init", "choose one of: constant, uniform, gaussian"),
    (["model.activation=explin"], "model.activation", "explin is written elu here"),
    (["model.activation=GELU"], "model.activation", "GELU is written gelu here"),
    (["model.class_path=nets.py:Net", "model.init_value=1.0"], "model.init_value", "never reads it"),
])
def test_bad_initializer_parameters_are_rejected_naming_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert info.value.key == key
    assert words in str(info.value)


def test_relevant_dict_shows_only_the_parameter_the_initializer_reads():
    shown = {init: {k for k in relevant_dict(load_config(None, [f"model.init={init}"]))["model"] if k in PARAMS}
             for init in ("constant", "uniform", "gaussian", "kaiming", "identity")}
    assert shown == {"constant": {"init_value"}, "uniform": {"init_bound"}, "gaussian": {"init_std"},
                     "kaiming": set(), "identity": set()}
