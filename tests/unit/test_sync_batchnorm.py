"""Synchronized batch norm in one process: gradcheck of the layer, and the
conversion of a model's batch-norm layers keeping parameters, state-dict keys,
layer objects, modes, hooks and attributes. (Across real processes:
tests/integration/test_sync_batchnorm.py.)"""

import pytest
import torch
from torch import nn

from dist_train.env import DistEnv
from dist_train.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm
from tests.helpers import CHANNELS, affine_init


def test_gradcheck_single_process():
    bn = SyncBatchNorm(CHANNELS).double()
    affine_init(bn)
    x = torch.randn(6, CHANNELS, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bn, (x,), eps=1e-6, atol=1e-6)


def test_conversion_keeps_parameters_and_state_dict_keys():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = convert_sync_batchnorm(model, DistEnv(world_size=2, rank=0))
    assert isinstance(converted[1], SyncBatchNorm) and isinstance(converted[2][1], SyncBatchNorm)
    after = converted.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    # one worker: nothing to synchronize
    plain = nn.Sequential(nn.BatchNorm1d(3))
    assert convert_sync_batchnorm(plain, DistEnv()) is plain and isinstance(plain[0], nn.BatchNorm1d)


def test_the_layers_to_synchronize_are_counted_and_none_is_no_warning_per_rank():
    import warnings

    from dist_train.sync_batchnorm import batch_norm_layers

    assert batch_norm_layers(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Sequential(nn.BatchNorm2d(3)))) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the run says it once (its start record), not each rank a UserWarning
        plain = nn.Sequential(nn.Linear(2, 2))
        assert convert_sync_batchnorm(plain, DistEnv(world_size=2, rank=1)) is plain


def test_conversion_keeps_the_layer_objects_training_mode_hooks_and_attributes():
    frozen = nn.BatchNorm2d(2, bias=False).double().eval()
    frozen.weight.requires_grad_(False)
    frozen.qconfig = "a user's attribute"
    seen = []
    handle = frozen.register_forward_hook(lambda module, args, out: seen.append(type(module)))
    model = nn.Sequential(frozen, nn.BatchNorm1d(2, affine=False, track_running_stats=False))
    tensors = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    converted = convert_sync_batchnorm(model, DistEnv(world_size=2, rank=0))
    bn = converted[0]
    assert isinstance(bn, SyncBatchNorm) and isinstance(converted[1], SyncBatchNorm)
    after = converted.state_dict(keep_vars=True)
    assert after.keys() == tensors.keys() and all(after[k] is v for k, v in tensors.items())
    assert bn.bias is None and converted[1].weight is None and converted[1].running_mean is None
    assert not bn.training and converted[1].training
    assert bn.weight.dtype == torch.float64 and not bn.weight.requires_grad
    assert bn.qconfig == "a user's attribute"
    bn(torch.randn(3, 2, 2, 2, dtype=torch.float64))  # eval: local, nothing to communicate
    handle.remove()
    bn(torch.randn(3, 2, 2, 2, dtype=torch.float64))
    assert seen == [SyncBatchNorm]
