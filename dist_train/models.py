"""The lecture's networks: an MLP with configurable activation, dropout, batch
norm and initialization, and a small CNN with batch norm. Built by name."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from dist_train.config import ModelConfig
from dist_train.errors import ConfigError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "selu": nn.SELU,
}

# torch's gain names for kaiming/xavier
_GAIN_NAME = {"relu": "relu", "leaky_relu": "leaky_relu", "tanh": "tanh", "sigmoid": "sigmoid", "selu": "selu"}


class MLP(nn.Module):
    """input -> [Linear -> (BatchNorm) -> activation -> (Dropout)] x hidden -> Linear."""

    def __init__(self, in_features: int, hidden_sizes: tuple[int, ...], num_outputs: int,
                 activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden_sizes:
            layers.append(nn.Linear(width, size))
            if batch_norm:  # before the non-linearity, as in Ioffe & Szegedy
                layers.append(nn.BatchNorm1d(size))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """[Conv3x3 -> BatchNorm2d -> activation -> MaxPool2] per channel width,
    then global average pooling and a linear classifier."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], num_outputs: int,
                 activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for size in channels:
            layers += [nn.Conv2d(width, size, 3, padding=1), nn.BatchNorm2d(size),
                       ACTIVATIONS[activation](), nn.MaxPool2d(2, ceil_mode=True)]
            width = size
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def check_model(cfg: ModelConfig, input_shape: tuple[int, ...]) -> None:
    """What the model needs of the data's shape, checked before any worker starts."""
    if cfg.name == "cnn" and len(input_shape) != 3:
        raise ConfigError("model.name", f"cnn needs image inputs (channels, height, width), the data has shape "
                          f"{input_shape}", "use model.name=mlp for flat features")


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """The model named by `cfg.name` for inputs of `input_shape` (without the batch dim)."""
    check_model(cfg, input_shape)
    if cfg.name == "mlp":
        model: nn.Module = MLP(math.prod(input_shape), cfg.hidden_sizes, num_outputs,
                               cfg.activation, cfg.dropout, cfg.batch_norm)
    elif cfg.name == "cnn":
        model = CNN(input_shape[0], cfg.channels, num_outputs, cfg.activation, cfg.dropout)
    else:  # Literal in the config makes this unreachable
        raise AssertionError(cfg.name)
    init_weights(model, cfg.init, cfg.activation, cfg.init_std)
    return model


def init_weights(model: nn.Module, scheme: str, activation: str, std: float = 0.01) -> None:
    """Initialize every Linear/Conv weight by `scheme`; biases start at zero.
    Normalization layers keep weight 1, bias 0."""
    gain_name = _GAIN_NAME[activation]
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
            else:  # kaiming's fan-in variance with the activation's own gain
                nn.init.normal_(w, 0.0, nn.init.calculate_gain(gain_name) / math.sqrt(nn.init._calculate_correct_fan(w, "fan_in")))
        elif scheme == "orthogonal":
            nn.init.orthogonal_(w, gain=nn.init.calculate_gain(gain_name) if gain_name != "leaky_relu" else nn.init.calculate_gain("leaky_relu", 0.01))
        else:
            raise AssertionError(scheme)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
