"""Optimizers from config; L2 decay on weights only; per-sample losses."""

import pytest
import torch
import torch.nn.functional as F

from dist_train.config import ModelConfig, OptimConfig
from dist_train.losses import build_loss
from dist_train.models import build_model
from dist_train.optim import build_optimizer


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adagrad", torch.optim.Adagrad),
                                       ("adadelta", torch.optim.Adadelta), ("rmsprop", torch.optim.RMSprop),
                                       ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_each_optimizer_is_built(name, cls):
    model = build_model(ModelConfig(), (8,), 3)
    opt = build_optimizer(OptimConfig(name=name, lr=0.1), model)
    assert type(opt) is cls
    assert all(g["lr"] == 0.1 for g in opt.param_groups)


def test_sgd_momentum_and_nesterov_reach_torch():
    model = build_model(ModelConfig(), (8,), 3)
    opt = build_optimizer(OptimConfig(name="sgd", momentum=0.9, nesterov=True), model)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["nesterov"] is True


def test_weight_decay_spares_biases_and_batch_norm():
    model = build_model(ModelConfig(hidden_sizes=(16, 8), batch_norm=True), (8,), 3)
    opt = build_optimizer(OptimConfig(name="sgd", weight_decay=0.01), model)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        is_linear_weight = name.endswith("weight") and p.ndim == 2
        assert (id(p) in decayed) == is_linear_weight, name
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_l2_decay_changes_weights_not_biases_when_gradients_are_zero():
    model = build_model(ModelConfig(hidden_sizes=(4,)), (3,), 2)
    torch.nn.init.constant_(model.net[1].bias, 1.0)
    opt = build_optimizer(OptimConfig(name="sgd", lr=0.1, weight_decay=0.5), model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if n.endswith("bias"):
            assert torch.equal(p, before[n]), n
        else:
            assert torch.allclose(p, before[n] * (1 - 0.1 * 0.5)), n


def test_losses_sum_or_per_sample_and_average_to_torchs_means():
    logits, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    onehot = F.one_hot(targets, 4).float()
    ce, bce, mse = (build_loss(n)(logits, targets, reduction="none") for n in ("cross_entropy", "binary_cross_entropy", "mse"))
    assert ce.shape == bce.shape == mse.shape == (6,)
    for name, per_sample in zip(("cross_entropy", "binary_cross_entropy", "mse"), (ce, bce, mse)):
        assert torch.allclose(build_loss(name)(logits, targets), per_sample.sum())  # "sum" is the default
    assert torch.allclose(ce.mean(), F.cross_entropy(logits, targets))
    assert torch.allclose(bce.mean(), F.binary_cross_entropy_with_logits(logits, onehot))
    assert torch.allclose(mse.mean(), F.mse_loss(logits, onehot))
