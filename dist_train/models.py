"""The lecture's networks: an MLP with configurable activation, dropout, batch
norm and initialization, and a small CNN with batch norm. Built by name."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from dist_train.config import ModelConfig
from dist_train.errors import ConfigError
from dist_train.tasks import CLASSIFICATION, Task
from dist_train.user_code import call_with, failure, resolve_callable

LEAKY_SLOPE = 0.01

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "selu": nn.SELU,
    "elu": nn.ELU,  # the course's ExpLin, alpha 1
    "gelu": nn.GELU,  # exact (erf), not the tanh approximation
    "identity": nn.Identity,
}

# torch's gain names (nn.init.calculate_gain) for the xavier, kaiming and
# orthogonal gains. torch has none for ELU and GELU: both are ReLU for positive
# inputs and are usually given He's (ReLU's) sqrt(2); identity is linear (1).
_GAIN_NAME = {"relu": "relu", "leaky_relu": "leaky_relu", "tanh": "tanh", "sigmoid": "sigmoid", "selu": "selu",
              "elu": "relu", "gelu": "relu", "identity": "linear"}


def _held(bias: torch.Tensor | None) -> torch.Tensor | None:
    """The bias's value with a gradient of exactly zero (0 x the incoming
    gradient): a layer's bias before batch norm is subtracted again by the
    norm, so its true gradient is zero and what backpropagation computes is
    rounding noise, which Adam-like optimizers would turn into steps of the
    full learning rate, differently for each order of summation (N workers
    would not compute what one process computes). The parameter stays (the
    same state_dict, checkpoints of earlier runs load) at the value it has."""
    return None if bias is None else bias.detach() + 0.0 * bias


class LinearBeforeNorm(nn.Linear):
    """nn.Linear followed by batch norm: its bias is held (see `_held`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, _held(self.bias))


class ConvBeforeNorm(nn.Conv2d):
    """nn.Conv2d followed by batch norm: its bias is held (see `_held`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, _held(self.bias))


class MLP(nn.Module):
    """input -> [Linear -> (BatchNorm) -> activation -> (Dropout)] x hidden -> Linear."""

    def __init__(self, in_features: int, hidden_sizes: tuple[int, ...], num_outputs: int,
                 activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden_sizes:
            layers.append((LinearBeforeNorm if batch_norm else nn.Linear)(width, size))
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
            layers += [ConvBeforeNorm(width, size, 3, padding=1), nn.BatchNorm2d(size),
                       ACTIVATIONS[activation](), nn.MaxPool2d(2, ceil_mode=True)]
            width = size
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def check_model(cfg: ModelConfig, input_shape: tuple[int, ...] | None) -> None:
    """What can be checked of the model before any worker starts: a class_path
    that imports; a built-in network's needs of the data's shape (when known)."""
    if cfg.class_path:
        resolve_callable("model.class_path", cfg.class_path)
        return
    if cfg.name == "cnn" and input_shape is not None and len(input_shape) != 3:
        raise ConfigError("model.name", f"cnn needs image inputs (channels, height, width), the data has shape "
                          f"{input_shape}", "use model.name=mlp for flat features")


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int,
                task: Task = CLASSIFICATION) -> nn.Module:
    """The model for inputs of `input_shape` (without the batch dim): a user's
    (`cfg.class_path`, called with init_args, and with input_shape and
    num_classes or num_outputs when it asks; its own initialization), or the
    built-in one named by `cfg.name`."""
    task = Task(task)
    if cfg.class_path:
        return user_model("model.class_path", resolve_callable("model.class_path", cfg.class_path), cfg.init_args,
                          task.offered(input_shape, num_outputs), cfg.class_path)
    check_model(cfg, input_shape)
    if cfg.name == "mlp":
        model: nn.Module = MLP(math.prod(input_shape), cfg.hidden_sizes, num_outputs,
                               cfg.activation, cfg.dropout, cfg.batch_norm)
    elif cfg.name == "cnn":
        model = CNN(input_shape[0], cfg.channels, num_outputs, cfg.activation, cfg.dropout)
    else:  # Literal in the config makes this unreachable
        raise AssertionError(cfg.name)
    init_weights(model, cfg)
    return model


def user_model(key: str, factory: Callable[..., object], init_args: dict, offered: dict, name: str) -> nn.Module:
    """A model of the user's own: `factory` called with `init_args` and what
    it asks for of `offered` (Task.offered); it must give an nn.Module."""
    model = call_with(key, factory, init_args, offered)
    if not isinstance(model, nn.Module):
        raise ConfigError(key, f"{name} returned a {type(model).__name__}, not a torch nn.Module")
    return model


def check_outputs(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, task: Task, num_outputs: int,
                  key: str = "model") -> None:
    """One forward pass of a few samples: the outputs must fit the targets
    (a score per class, or one value per target value), before the first step."""
    was_training = model.training
    model.eval()  # no batch statistics from two samples, no dropout
    try:
        with torch.no_grad():
            outputs = model(inputs)
    except Exception as exc:
        raise ConfigError(key, f"the model's forward pass on inputs of shape {tuple(inputs.shape)} failed: "
                          f"{failure(exc)}",
                          "make the model take a batch of inputs of the data's shape") from None
    finally:
        model.train(was_training)
    if not isinstance(outputs, torch.Tensor):
        raise ConfigError(key, f"the model returned a {type(outputs).__name__}, not a tensor of outputs")
    n = len(inputs)
    if Task(task).classifies:
        want, what = (n, num_outputs), f"one score per class ({num_outputs} classes)"
    else:
        want, what = (n, num_outputs), f"one value per target value ({num_outputs})"
        if num_outputs == 1 and tuple(outputs.shape) == (n,):
            want = (n,)
    if tuple(outputs.shape) != want:
        raise ConfigError(key, f"the model's outputs have shape {tuple(outputs.shape)} for a batch of {n}, but the "
                          f"targets need {want}: {what}", "give the model's last layer "
                          f"{num_outputs} outputs (it may ask for num_classes or num_outputs)")


def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """Initialize every Linear/Conv weight by `cfg.init`; biases start at zero.
    Normalization layers keep weight 1, bias 0. Each scheme is torch's nn.init
    function of that name, with the gain of `cfg.activation` where it takes one."""
    init = _INITS[cfg.init]
    gain_name = _GAIN_NAME[cfg.activation]
    slope = LEAKY_SLOPE if gain_name == "leaky_relu" else 0
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        init(module.weight, cfg, gain_name, slope)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _gain(gain_name: str, slope: float) -> float:
    return nn.init.calculate_gain(gain_name, slope) if gain_name == "leaky_relu" else nn.init.calculate_gain(gain_name)


def _identity(w: torch.Tensor) -> None:
    # Linear: torch's eye_, ones on the diagonal of a non-square matrix too (the
    # first min(out, in) outputs copy their input, the rest start at 0); conv:
    # dirac_, the kernel's centre, so with "same" padding each of the first
    # min(out, in) channels passes its input channel through
    if w.dim() == 2:
        nn.init.eye_(w)
    else:
        nn.init.dirac_(w)


_Init = Callable[[torch.Tensor, ModelConfig, str, float], object]
_INITS: dict[str, _Init] = {
    "constant": lambda w, cfg, g, a: nn.init.constant_(w, cfg.init_value),
    "uniform": lambda w, cfg, g, a: nn.init.uniform_(w, -cfg.init_bound, cfg.init_bound),
    "gaussian": lambda w, cfg, g, a: nn.init.normal_(w, 0.0, cfg.init_std),
    "xavier_uniform": lambda w, cfg, g, a: nn.init.xavier_uniform_(w, gain=_gain(g, a)),
    "xavier_normal": lambda w, cfg, g, a: nn.init.xavier_normal_(w, gain=_gain(g, a)),
    # fan-in, He et al.'s choice (the forward pass keeps its variance)
    "kaiming_normal": lambda w, cfg, g, a: nn.init.kaiming_normal_(w, a=a, mode="fan_in", nonlinearity=g),
    "kaiming_uniform": lambda w, cfg, g, a: nn.init.kaiming_uniform_(w, a=a, mode="fan_in", nonlinearity=g),
    "identity": lambda w, cfg, g, a: _identity(w),
    "orthogonal": lambda w, cfg, g, a: nn.init.orthogonal_(w, gain=_gain(g, a)),
}
_INITS["glorot_uniform"] = _INITS["xavier_uniform"]
_INITS["glorot_normal"] = _INITS["xavier_normal"]
# what `kaiming` always drew: torch's kaiming_normal_ (for tanh, sigmoid and selu
# the same fan-in normal with that activation's gain); a test holds it bit-equal
_INITS["kaiming"] = _INITS["kaiming_normal"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
