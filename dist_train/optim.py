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


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    name = cfg.name
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr, eps=cfg.eps)
    if name == "adadelta":
        return torch.optim.Adadelta(groups, lr=cfg.lr, rho=cfg.rho, eps=cfg.eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum)
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    raise AssertionError(name)  # the config's Literal rejects other names


# the config's value of each hyperparameter a torch optimizer keeps in its param groups
def _hyperparameters(cfg: OptimConfig) -> dict[str, object]:
    return {"momentum": cfg.momentum, "nesterov": cfg.nesterov, "betas": tuple(cfg.betas), "eps": cfg.eps,
            "alpha": cfg.alpha, "rho": cfg.rho}


def apply_hyperparameters(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> None:
    """Put the config's hyperparameters into the optimizer's groups. Loading an
    optimizer's state brings back the values it was saved with; a resumed run
    goes on with the config's (the LR is set by the schedule every step). The
    first group is the decayed one (see `param_groups`)."""
    values = _hyperparameters(cfg)
    for index, group in enumerate(optimizer.param_groups):
        for key, value in values.items():
            if key in group:
                group[key] = value
        if "weight_decay" in group:
            group["weight_decay"] = cfg.weight_decay if index == 0 else 0.0
