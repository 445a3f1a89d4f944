"""The paths issue 18 added for speed, as far as a CPU can test them: the
cache's size check, torch's fused and multi-tensor optimizer kernels (the
same updates as the loop of small kernels), train.compile's rules. The GPU
side runs in tests/integration/test_gpu.py when CUDA is there."""

import pytest
import torch

from dist_train.config import OptimConfig, load_config
from dist_train.data.cache import check_fits
from dist_train.env import DistEnv
from dist_train.errors import ConfigError, DistTrainError
from dist_train.optim import apply_hyperparameters, build_optimizer, kernels


def test_a_cache_that_does_not_fit_says_how_much_it_needs():
    env = DistEnv(local_world_size=2)
    with pytest.raises(DistTrainError, match=r"data.cache=host needs 2048.00 GiB .*for all workers on this node.* "
                                             r"host memory, which has .* GiB available; use data.cache=none"):
        check_fits(1024 * 2**30, "host", env)  # 1 TiB a worker, two workers
    check_fits(2**20, "host", env)  # a MiB fits


def test_gpu_kernels_are_chosen_per_optimizer_and_none_on_a_cpu():
    assert kernels("adam", "cpu") == {} and kernels("sgd", "cpu") == {}
    assert kernels("adam", "cuda:0") == {"fused": True} and kernels("adamw", "cuda:1") == {"fused": True}
    assert kernels("sgd", "cuda:0") == {"fused": True}
    assert kernels("rmsprop", "cuda:0") == kernels("adadelta", "cuda:0") == kernels("adagrad", "cuda:0") == {
        "foreach": True}


@pytest.mark.parametrize("name, extra, implementation", [
    ("adam", {}, {"fused": True}), ("adamw", {"weight_decay": 0.05}, {"fused": True}),
    ("sgd", {"momentum": 0.9, "nesterov": True}, {"fused": True}), ("adagrad", {}, {"foreach": True}),
    ("rmsprop", {"momentum": 0.5}, {"foreach": True}), ("adadelta", {"lr": 1.0}, {"foreach": True})])
def test_fused_and_multi_tensor_kernels_update_as_the_plain_loop_does(name, extra, implementation):
    """On the CPU (where torch has them too) as the GPU will use them: 20 steps, float tolerance."""
    cfg = OptimConfig(name=name, **{"lr": 0.01, **extra})

    def train(impl):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        train.initial = model[0].weight.detach().clone()
        opt = build_optimizer(cfg, model, "cpu", impl)
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return model.state_dict()

    plain, fast = train({}), train(implementation)
    for key in plain:
        assert torch.allclose(plain[key], fast[key], atol=1e-6, rtol=1e-5), key
    assert not torch.equal(plain["0.weight"], train.initial)  # the 20 steps moved the weights


def test_a_resumed_optimizer_takes_this_runs_kernels():
    model = torch.nn.Linear(3, 2)
    saved = build_optimizer(OptimConfig(), model, "cpu", {"fused": True}).state_dict()  # as saved on a GPU
    opt = build_optimizer(OptimConfig(), model, "cpu")
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["fused"] is True
    apply_hyperparameters(opt, OptimConfig(), "cpu")
    assert opt.param_groups[0]["fused"] is None and opt.param_groups[0]["foreach"] is None


def test_compile_is_refused_with_deepspeed():
    with pytest.raises(ConfigError, match="train.compile.*not supported with strategy.name=deepspeed"):
        load_config(None, ["train.compile=true", "strategy.name=deepspeed"])
