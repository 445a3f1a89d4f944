"""The CUDA path: CUDA training against CPU training, and bf16/fp16 against
fp32 on one GPU over NCCL. Runs only where a GPU is present (never in CI,
which has none)."""

import pytest
import torch

from dist_train.config import load_config
from dist_train.env import DistEnv
from tests.helpers import build_trainer
from tests.conftest import REPO


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")]


def test_cuda_training_matches_cpu_training():
    overrides = ["data.source=synthetic", "train.epochs=2", "model.hidden_sizes=[16]"]
    results = {}
    for device in ("cpu", "cuda"):
        cfg = load_config(None, overrides + [f"dist.device={device}"])
        env = DistEnv.from_env({}, device=device)
        model = build_trainer(cfg, env).fit().network
        results[device] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for key, value in results["cpu"].items():
        assert torch.allclose(value, results["cuda"][key], atol=1e-4), key


def precision_accuracies(env, config):
    """One GPU, a process group of one over NCCL: every precision under DDP and DeepSpeed."""
    out = {}
    for strategy in ("ddp", "deepspeed"):
        for precision in ("fp32", "bf16", "fp16"):
            if strategy == "deepspeed":
                try:
                    import deepspeed  # noqa: F401
                except ImportError:
                    continue
            cfg = load_config(config, ["run.progress=false", "wandb.mode=disabled", "dist.device=cuda",
                                       f"strategy.name={strategy}", f"train.precision={precision}"])
            out[(strategy, precision)] = build_trainer(cfg, env).fit().test["accuracy"]
    return out


@pytest.mark.parametrize("config", ["configs/quickstart.yaml", "configs/digits_cnn.yaml"])
def test_bf16_and_fp16_reach_the_fp32_accuracy_band_under_ddp_and_deepspeed(config):
    from tests.multiproc import run_workers

    path = f"{REPO}/{config}"
    (result,) = run_workers(precision_accuracies, 1, path, timeout_s=900, device="cuda")
    for (strategy, precision), accuracy in result.items():
        reference = result[(strategy, "fp32")]
        assert abs(accuracy - reference) <= 0.03, f"{config} {strategy} {precision}: {accuracy:.3f} vs fp32 {reference:.3f}"


def trained_on(device, overrides):
    cfg = load_config(None, ["data.source=synthetic", "train.epochs=2", "model.hidden_sizes=[16]", "model.dropout=0.0",
                             f"dist.device={device}", *overrides])
    model = build_trainer(cfg, DistEnv.from_env({}, device=device)).fit().network
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("optim", ["optim.name=adam", "optim.name=adamw", "optim.name=sgd", "optim.name=rmsprop"])
def test_fused_and_multi_tensor_optimizers_on_cuda_train_as_the_cpu_does(optim):
    from dist_train.optim import kernels

    cpu, cuda = trained_on("cpu", [optim]), trained_on("cuda", [optim])
    assert kernels(optim.split("=")[1], "cuda:0")  # the GPU run used them
    for key, value in cpu.items():
        assert torch.allclose(value, cuda[key], atol=1e-4), key


def test_cache_on_the_device_and_prefetched_batches_change_no_number():
    plain = trained_on("cuda", [])
    for cache in ("host", "device"):  # host: pinned memory, copied ahead of each step on a side stream
        cached = trained_on("cuda", [f"data.cache={cache}"])
        for key, value in plain.items():
            assert torch.equal(value, cached[key]), (cache, key)


def test_streamed_shards_are_fed_to_the_gpu_ahead_of_each_step(tmp_path):
    from dist_train.data.prepare import PrepareOptions, prepare

    prepare("synthetic", PrepareOptions(out=tmp_path / "s", num_samples=600, input_shape=(12,), num_classes=3,
                                        train_shards=2))
    keys = ["data.source=shards", f"data.path={tmp_path / 's'}", "data.loader_workers=1"]
    cpu, cuda = trained_on("cpu", keys), trained_on("cuda", keys)
    for key, value in cpu.items():
        assert torch.allclose(value, cuda[key], atol=1e-4), key


def test_compile_on_cuda_trains_as_without():
    plain, compiled = trained_on("cuda", []), trained_on("cuda", ["train.compile=true"])
    for key, value in plain.items():
        assert torch.allclose(value, compiled[key], atol=1e-5), key
