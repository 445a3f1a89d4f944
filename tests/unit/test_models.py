"""The lecture's networks: sizes, layer order, initialization schemes."""

import math

import pytest
import torch
from torch import nn

from dist_train.config import ModelConfig
from dist_train.models import CNN, MLP, LinearBeforeNorm, build_model, count_parameters


def test_default_784_64_10_mlp_has_50890_parameters():
    model = build_model(ModelConfig(), (784,), 10)
    assert count_parameters(model) == 50_890
    assert model(torch.randn(5, 784)).shape == (5, 10)


def test_4096_32_3_mlp_has_131203_parameters():
    model = build_model(ModelConfig(hidden_sizes=(32,)), (4096,), 3)
    assert count_parameters(model) == 131_203


def test_images_are_flattened_for_the_mlp():
    model = build_model(ModelConfig(hidden_sizes=(16,)), (1, 8, 8), 10)
    assert count_parameters(model) == 64 * 16 + 16 + 16 * 10 + 10
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize("name, cls", [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("tanh", nn.Tanh),
                                       ("sigmoid", nn.Sigmoid), ("selu", nn.SELU), ("elu", nn.ELU),
                                       ("gelu", nn.GELU), ("identity", nn.Identity)])
def test_batch_norm_comes_before_the_activation_then_dropout(name, cls):
    model = MLP(10, (8, 8), 2, activation=name, dropout=0.5, batch_norm=True)
    kinds = [type(m) for m in model.net]
    assert kinds == [nn.Flatten, LinearBeforeNorm, nn.BatchNorm1d, cls, nn.Dropout,
                     LinearBeforeNorm, nn.BatchNorm1d, cls, nn.Dropout, nn.Linear]
    assert issubclass(LinearBeforeNorm, nn.Linear)


def _hidden_weight(init, activation="relu", fan_in=400, width=300, **kw):
    model = build_model(ModelConfig(hidden_sizes=(width,), init=init, activation=activation, **kw), (fan_in,), 10)
    first = model.net[1]
    assert torch.count_nonzero(first.bias) == 0  # biases start at zero
    return first.weight.detach()


def test_gaussian_init_uses_the_given_std():
    w = _hidden_weight("gaussian", init_std=0.05)
    assert w.std().item() == pytest.approx(0.05, rel=0.05)


def test_kaiming_init_has_variance_two_over_fan_in_for_relu():
    w = _hidden_weight("kaiming", fan_in=400)
    assert w.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.05)


@pytest.mark.parametrize("init", ["xavier_uniform", "glorot_uniform"])
def test_glorot_uniform_bounds_follow_fan_in_plus_fan_out(init):
    w = _hidden_weight(init, activation="sigmoid", fan_in=400, width=300)
    bound = math.sqrt(6 / (400 + 300))
    assert w.abs().max().item() <= bound + 1e-7
    assert w.abs().max().item() > 0.95 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_orthogonal_init_gives_orthonormal_rows():
    w = _hidden_weight("orthogonal", activation="sigmoid", fan_in=400, width=300)
    assert torch.allclose(w @ w.T, torch.eye(300), atol=1e-4)


def test_cnn_has_batch_norm_and_classifies_images():
    model = build_model(ModelConfig(name="cnn", channels=(4, 8)), (1, 8, 8), 10)
    assert isinstance(model, CNN)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_cnn_on_flat_features_is_a_config_error():
    from dist_train.errors import ConfigError

    with pytest.raises(ConfigError, match="cnn needs image inputs"):
        build_model(ModelConfig(name="cnn"), (32,), 4)


def test_a_layer_before_batch_norm_keeps_its_bias_with_a_gradient_of_exactly_zero():
    """Batch norm subtracts the bias again: its true gradient is zero, and it
    gets exactly zero (not rounding noise that Adam would turn into steps);
    the parameters and state_dict keys stay those of nn.Linear / nn.Conv2d,
    so checkpoints of earlier runs load."""
    torch.manual_seed(0)
    for model, x in ((MLP(6, (5, 4), 3, batch_norm=True), torch.randn(16, 6)),
                     (CNN(1, (4,), 3), torch.randn(8, 1, 6, 6))):
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    m.bias.uniform_(-1, 1)  # a bias an earlier run left, not 0
        model(x).square().sum().backward()
        held = [m for m in model.modules() if type(m).__name__ in ("LinearBeforeNorm", "ConvBeforeNorm")]
        assert held and all(torch.equal(m.bias.grad, torch.zeros_like(m.bias)) for m in held)
        assert all(m.weight.grad.abs().sum() > 0 for m in held)
        assert model.net[-1].bias.grad.abs().sum() > 0  # the output layer's bias learns as usual
    assert list(MLP(6, (5, 4), 3, batch_norm=True).state_dict()) == [
        "net.1.weight", "net.1.bias", "net.2.weight", "net.2.bias", "net.2.running_mean", "net.2.running_var",
        "net.2.num_batches_tracked", "net.4.weight", "net.4.bias", "net.5.weight", "net.5.bias",
        "net.5.running_mean", "net.5.running_var", "net.5.num_batches_tracked", "net.7.weight", "net.7.bias"]
