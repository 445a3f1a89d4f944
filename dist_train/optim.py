"""Optimizers from config. L2 weight decay applies to weights only: biases and
normalization parameters go in a group without decay."""

from __future__ import annotations

import torch
from torch import nn

from dist_train.config import OptimConfig

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(module, _NORM_TYPES) or name == "bias":
                no_decay.append(param)
            else:
                decay.append(param)
    if weight_decay == 0.0:
        # one group: each extra group is one more pass of optimizer kernels per step
        return [{"params": decay + no_decay, "weight_decay": 0.0}]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


#: torch's single-kernel (fused) implementations on a GPU, where torch has one
#: for the optimizer; the others use its multi-tensor (foreach) kernels there
FUSED_ON_CUDA = ("sgd", "adam", "adamw")


def kernels(name: str, device: str) -> dict[str, bool]:
    """How the optimizer's update runs: on a GPU, one fused kernel (or a few
    multi-tensor ones) for all parameters instead of a loop of small kernels
    per parameter, which bounds a small network's step; the same arithmetic
    to float rounding. On the CPU, torch's default (as before)."""
    if not device.startswith("cuda"):
        return {}
    return {"fused": True} if name in FUSED_ON_CUDA else {"foreach": True}


def build_optimizer(cfg: OptimConfig, model: nn.Module, device: str = "cpu",
                    implementation: dict[str, bool] | None = None) -> torch.optim.Optimizer:
    """`implementation`: torch's fused/foreach switches, default `kernels(name, device)`."""
    groups = param_groups(model, cfg.weight_decay)
    name = cfg.name
    k = kernels(name, device) if implementation is None else implementation
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **k)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr, eps=cfg.eps, **k)
    if name == "adadelta":
        return torch.optim.Adadelta(groups, lr=cfg.lr, rho=cfg.rho, eps=cfg.eps, **k)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum, **k)
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **k)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **k)
    raise AssertionError(name)  # the config's Literal rejects other names


# the config's value of each hyperparameter a torch optimizer keeps in its param groups
def _hyperparameters(cfg: OptimConfig) -> dict[str, object]:
    return {"momentum": cfg.momentum, "nesterov": cfg.nesterov, "betas": tuple(cfg.betas), "eps": cfg.eps,
            "alpha": cfg.alpha, "rho": cfg.rho}


def apply_hyperparameters(optimizer: torch.optim.Optimizer, cfg: OptimConfig, device: str = "cpu") -> None:
    """Put the config's hyperparameters into the optimizer's groups. Loading an
    optimizer's state brings back the values it was saved with; a resumed run
    goes on with the config's (the LR is set by the schedule every step). The
    first group is the decayed one (see `param_groups`)."""
    # and this run's kernels: a checkpoint saved on a GPU (fused) may resume on a CPU
    values = {**_hyperparameters(cfg), "fused": None, "foreach": None, **kernels(cfg.name, device)}
    for index, group in enumerate(optimizer.param_groups):
        for key, value in values.items():
            if key in group:
                group[key] = value
        if "weight_decay" in group:
            group["weight_decay"] = cfg.weight_decay if index == 0 else 0.0
