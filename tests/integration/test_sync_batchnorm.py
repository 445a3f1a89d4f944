"""Synchronized batch norm: N workers normalize exactly as one device does on
the concatenated batch (real processes over gloo)."""

import datetime

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from dist_train.config import load_config
from dist_train.env import DistEnv
from dist_train.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm
from tests.helpers import build_trainer
from tests.conftest import REPO
from tests.helpers import CHANNELS, affine_init
from tests.multiproc import run_workers, to_numpy


STEPS = 2  # two training steps: the running statistics are updated twice


def case_data(shape_tail, sizes, dtype, step):
    """The global batch of one step (identical on every rank) and the upstream gradient."""
    gen = torch.Generator().manual_seed(100 * step + sum(sizes))
    total = sum(sizes)
    x = (torch.randn(total, CHANNELS, *shape_tail, generator=gen) * 2.0 + 0.5).to(dtype)
    g = torch.randn(total, CHANNELS, *shape_tail, generator=gen).to(dtype)
    return x, g


def run_case(bn, shape_tail, sizes, dtype, lo, hi):
    """Train-mode forward/backward of rows lo:hi of each step's global batch."""
    out = []
    for step in range(STEPS):
        x, g = case_data(shape_tail, sizes, dtype, step)
        x = x[lo:hi].clone().requires_grad_(True)
        bn.zero_grad()
        y = bn(x)
        (y * g[lo:hi]).sum().backward()
        out.append({"y": y.detach(), "gx": x.grad, "gw": bn.weight.grad.clone(), "gb": bn.bias.grad.clone()})
    return {"steps": out, "running_mean": bn.running_mean.clone(), "running_var": bn.running_var.clone()}


def sync_worker(env, cases):
    results = {}
    for shape_tail, sizes, dtype_name in cases:
        dtype = getattr(torch, dtype_name)
        bn = SyncBatchNorm(CHANNELS, world_size=env.world_size).to(dtype)
        affine_init(bn)
        lo = sum(sizes[:env.rank])
        results[(shape_tail, sizes, dtype_name)] = run_case(bn, shape_tail, sizes, dtype, lo, lo + sizes[env.rank])
    return results


PLAIN = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}  # by spatial dims


def reference(shape_tail, sizes, dtype):
    bn = PLAIN[len(shape_tail)](CHANNELS).to(dtype)
    affine_init(bn)
    return to_numpy(run_case(bn, shape_tail, sizes, dtype, 0, sum(sizes)))


CASES = [
    # (input shape after channels, per-rank sizes)
    ((), (4, 4)),            # BatchNorm1d on (N, C), equal
    ((), (5, 2)),            # unequal
    ((7,), (3, 3, 3)),       # BatchNorm1d on (N, C, L), 3 workers
    ((4, 4), (3, 3)),        # BatchNorm2d, equal
    ((4, 4), (1, 4, 2)),     # BatchNorm2d, unequal, 3 workers
    ((4, 4), (4, 0, 3)),     # a worker with no samples at all
    ((), (6, 0)),
    ((2, 3, 3), (2, 3)),     # BatchNorm3d
]


DTYPES = {"float64": 1e-6, "float32": 1e-5}


@pytest.fixture(scope="module")
def synced_results():
    """Every case, run once per world size (one spawn of 2 and one of 3 workers)."""
    out = {}
    for world in (2, 3):
        cases = [(t, s, d) for t, s in CASES if len(s) == world for d in DTYPES]
        for rank, result in enumerate(run_workers(sync_worker, world, cases, timeout_s=180)):
            for key, value in result.items():
                out.setdefault(key, [None] * world)[rank] = value
    return out


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape_tail, sizes", CASES)
def test_workers_equal_single_process_batch_norm_on_the_whole_batch(synced_results, shape_tail, sizes, dtype_name):
    tol = DTYPES[dtype_name]
    ref = reference(shape_tail, sizes, getattr(torch, dtype_name))
    ranks = synced_results[(shape_tail, sizes, dtype_name)]
    for step in range(STEPS):
        got = [r["steps"][step] for r in ranks]
        want = ref["steps"][step]
        np.testing.assert_allclose(np.concatenate([g["y"] for g in got]), want["y"], rtol=tol, atol=tol)
        np.testing.assert_allclose(np.concatenate([g["gx"] for g in got]), want["gx"], rtol=tol, atol=tol)
        # each rank holds its samples' part of the parameter gradients; DDP sums them
        np.testing.assert_allclose(sum(g["gw"] for g in got), want["gw"], rtol=tol, atol=tol)
        np.testing.assert_allclose(sum(g["gb"] for g in got), want["gb"], rtol=tol, atol=tol)
    for r in ranks:  # running statistics: the single-process ones, identical on every rank
        np.testing.assert_allclose(r["running_mean"], ref["running_mean"], rtol=tol, atol=tol)
        np.testing.assert_allclose(r["running_var"], ref["running_var"], rtol=tol, atol=tol)
        assert np.array_equal(r["running_var"], ranks[0]["running_var"])


def test_one_value_per_channel_across_all_ranks_is_refused_on_every_rank():
    assert run_workers(_expect_single_value_error, 2) == [True, True]


def _expect_single_value_error(env):
    bn = SyncBatchNorm(CHANNELS, world_size=env.world_size)
    try:
        bn(torch.randn(1 if env.rank == 0 else 0, CHANNELS))
    except ValueError as exc:
        return "more than 1 value per channel across all ranks" in str(exc)
    return False


def eval_worker(env):
    """Rank 0 evaluates three batches while rank 1 evaluates none: with any
    collective in eval mode this would hang (and time out)."""
    calls = []
    real = {name: getattr(dist, name) for name in ("all_reduce", "all_gather")}  # the layer's collectives

    def counting(name):
        def collective(*args, **kwargs):
            calls.append(name)
            return real[name](*args, **kwargs)
        return collective

    bn = SyncBatchNorm(CHANNELS, world_size=env.world_size)
    bn.train()
    bn(torch.randn(8, CHANNELS) + env.rank)  # one training step to move the running stats
    bn.eval()
    outputs = []
    for name in real:  # spies on the module-level functions the layer calls
        setattr(dist, name, counting(name))
    try:
        if env.rank == 0:
            for _ in range(3):
                x = torch.randn(5, CHANNELS)
                outputs.append((bn(x), torch.nn.functional.batch_norm(
                    x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)))
    finally:
        for name, function in real.items():
            setattr(dist, name, function)
    dist.barrier()
    return {"calls": len(calls), "max_diff": max((float((a - b).abs().max()) for a, b in outputs), default=0.0)}


def test_eval_mode_uses_running_statistics_and_communicates_nothing():
    r0, r1 = run_workers(eval_worker, 2, timeout_s=90)
    assert r0["calls"] == 0 and r1["calls"] == 0
    assert r0["max_diff"] == 0.0


# ---------------------------------------------------- gradcheck across processes

FORWARD, BACKWARD, DONE = 0, 1, 2


def _command(env, value=0):
    t = torch.tensor([value])
    dist.broadcast(t, src=0)
    return int(t.item())


class _AnnounceBackward(torch.autograd.Function):
    """Identity whose backward tells the mirror rank that a backward pass begins."""

    @staticmethod
    def forward(ctx, y, env_rank):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, dy):
        _command(None, BACKWARD)
        return dy, None


def gradcheck_worker(env):
    """Rank 0 runs torch.autograd.gradcheck on its input, perturbing it element by
    element through the real 2-process layer; rank 1 mirrors every forward and
    backward with its own fixed input and a zero upstream gradient, so the
    function checked is "rank 0's output as a function of rank 0's input", the
    global statistics included. (Rank 1's zero gradient adds nothing to the
    backward sums; their reduction across ranks is checked by the comparison
    of input gradients with single-process batch norm above.)"""
    torch.manual_seed(0)
    bn = SyncBatchNorm(CHANNELS, world_size=env.world_size).double()
    affine_init(bn)
    bn.train()
    bn.track_running_stats = True
    if env.rank == 0:
        x = torch.randn(4, CHANNELS, 2, dtype=torch.float64, requires_grad=True)

        def fn(inp):
            _command(env, FORWARD)
            return _AnnounceBackward.apply(bn(inp), 0)

        ok = torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-5)
        _command(env, DONE)
        return ok
    x = torch.randn(3, CHANNELS, 2, dtype=torch.float64, requires_grad=True) * 3 + 1
    y = None
    while True:
        cmd = _command(env)
        if cmd == DONE:
            return True
        if cmd == FORWARD:
            y = bn(x)
        else:
            torch.autograd.backward(y, torch.zeros_like(y), retain_graph=True)


def test_gradcheck_of_the_custom_function_across_two_processes():
    assert run_workers(gradcheck_worker, 2, timeout_s=120) == [True, True]


# ------------------------------------------------------------ in the trainer

CNN = ["model.sync_batchnorm={}", "train.max_steps=8", "train.grad_accum_steps=1", "dist.device=cpu",
       "optim.name=sgd", "optim.lr=0.05", "optim.momentum=0.9", "optim.weight_decay=0", "train.global_batch_size=16"]


def cnn_weights(env, sync, accum=1):
    cfg = load_config(f"{REPO}/configs/digits_cnn.yaml",
                      [CNN[0].format(str(sync).lower()), *CNN[1:], f"train.grad_accum_steps={accum}"])
    model = build_trainer(cfg, env).fit().network
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_cnn_with_sync_batchnorm_on_two_workers_matches_one_process():
    single = to_numpy(cnn_weights(DistEnv(), True))  # one worker: ordinary batch norm
    synced = run_workers(cnn_weights, 2, True, timeout_s=180)
    for r, result in enumerate(synced):
        for key, value in single.items():
            diff = np.max(np.abs(result[key].astype(np.float64) - value))
            assert diff <= 1e-5, f"rank {r}, {key}: max |diff| {diff:.3g}"
    # without synchronization each worker normalizes its own 8 samples: not the same training
    unsynced = run_workers(cnn_weights, 2, False, timeout_s=180)
    assert np.max(np.abs(unsynced[0]["net.0.weight"] - single["net.0.weight"])) > 1e-4


def test_sync_batchnorm_with_gradient_accumulation_keeps_every_rank_identical():
    # micro-batch statistics span both workers; running statistics and weights
    # stay bit-identical across ranks although no_sync skips the gradient all-reduce
    r0, r1 = run_workers(cnn_weights, 2, True, 2, timeout_s=180)
    for key in r0:
        assert np.array_equal(r0[key], r1[key]), key
    assert r0["net.1.num_batches_tracked"] == 16  # 8 steps x 2 micro-batches


# ------------------------------------------------------- a user's own batch norm

def _frozen_bn():
    bn = nn.BatchNorm2d(CHANNELS)
    bn.requires_grad_(False)
    return bn


# The batch-norm layers users write, as plain layers: converted on N workers they
# must train exactly as the plain layer does on the concatenated batch.
VARIANTS = {  # name: (plain layer, input shape after channels, dtype)
    "bias=False": (lambda: nn.BatchNorm2d(CHANNELS, bias=False), (4, 4), "float32"),
    "affine=False": (lambda: nn.BatchNorm2d(CHANNELS, affine=False), (4, 4), "float32"),
    "track_running_stats=False": (lambda: nn.BatchNorm1d(CHANNELS, track_running_stats=False), (5,), "float32"),
    "float64": (lambda: nn.BatchNorm2d(CHANNELS).double(), (4, 4), "float64"),
    "frozen": (_frozen_bn, (4, 4), "float32"),
    "BatchNorm3d": (lambda: nn.BatchNorm3d(CHANNELS), (2, 3, 3), "float32"),
}


VARIANT_SIZES = {2: (5, 3), 3: (3, 0, 4)}


def plain_model(variant):
    """The variant's layer with the same initial values on every rank and in the reference."""
    make, _, _ = VARIANTS[variant]
    model = nn.Sequential(make())
    bn = model[0]
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.copy_(torch.linspace(0.5, 1.5, CHANNELS))
        if bn.bias is not None:
            bn.bias.copy_(torch.linspace(-0.2, 0.2, CHANNELS))
    return model


def train_steps(model, optimizer, variant, sizes, lo, hi, reduce_grads=False):
    """STEPS steps of forward, backward and SGD on rows lo:hi of each step's global batch."""
    _, shape_tail, dtype_name = VARIANTS[variant]
    steps = []
    for step in range(STEPS):
        x, g = case_data(shape_tail, sizes, getattr(torch, dtype_name), step)
        x = x[lo:hi].clone().requires_grad_(True)
        model.zero_grad()
        y = model(x)
        (y * g[lo:hi]).sum().backward()
        if reduce_grads:  # what DDP does: each rank holds its samples' part of the parameter gradients
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
        if optimizer is not None:
            optimizer.step()
        steps.append({"y": y.detach(), "gx": x.grad})
    return {"steps": steps, "state": {k: v.clone() for k, v in model.state_dict().items()},
            "dtypes": {k: str(v.dtype) for k, v in model.state_dict().items()},
            "requires_grad": [p.requires_grad for p in model.parameters()]}


def _sgd(model):
    params = list(model.parameters())
    return torch.optim.SGD(params, lr=0.1, momentum=0.9) if params else None


def converted_worker(env, variants):
    sizes = VARIANT_SIZES[env.world_size]
    lo = sum(sizes[:env.rank])
    results = {}
    for variant in variants:
        model = plain_model(variant)
        before = list(model.parameters()) + list(model.buffers())
        optimizer = _sgd(model)  # built before conversion, as a user's training script may
        model = convert_sync_batchnorm(model, env)
        assert isinstance(model[0], SyncBatchNorm), type(model[0])
        after = list(model.parameters()) + list(model.buffers())
        out = train_steps(model, optimizer, variant, sizes, lo, lo + sizes[env.rank], reduce_grads=True)
        out["same_objects"] = len(before) == len(after) and all(a is b for a, b in zip(before, after))
        results[variant] = out
    return results


@pytest.fixture(scope="module")
def converted_results():
    """Every variant, converted and trained on 2 and on 3 workers (one spawn each)."""
    return {world: run_workers(converted_worker, world, list(VARIANTS), timeout_s=180) for world in (2, 3)}


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_converted_user_batch_norm_trains_as_plain_batch_norm_on_the_whole_batch(converted_results, variant, world):
    sizes = VARIANT_SIZES[world]
    plain = plain_model(variant)
    ref = to_numpy(train_steps(plain, _sgd(plain), variant, sizes, 0, sum(sizes)))
    tol = DTYPES[VARIANTS[variant][2]]
    for rank, got in enumerate(r[variant] for r in converted_results[world]):
        # the very Parameter and buffer objects: the optimizer built before conversion trained them
        assert got["same_objects"], f"rank {rank}"
        assert got["dtypes"] == ref["dtypes"], f"rank {rank}: dtype or state-dict keys changed"
        assert got["requires_grad"] == ref["requires_grad"], f"rank {rank}: frozen parameters trained"
        for key, want in ref["state"].items():  # parameters after SGD, running statistics
            np.testing.assert_allclose(got["state"][key], want, rtol=tol, atol=tol, err_msg=f"rank {rank}, {key}")
    for step in range(STEPS):
        got = [r[variant]["steps"][step] for r in converted_results[world]]
        for name in ("y", "gx"):
            np.testing.assert_allclose(np.concatenate([g[name] for g in got]), ref["steps"][step][name],
                                       rtol=tol, atol=tol, err_msg=f"step {step}, {name}")


def eval_without_running_stats_worker(env):
    """Rank 0 evaluates a layer without running statistics while rank 1 only
    waits, on a group that gives up after 10 s, for rank 0 to finish. Any
    collective in that evaluation pairs with nothing on rank 1: rank 1's wait
    times out and the test fails in seconds instead of hanging."""
    patient_for_10s = dist.new_group([0, 1], timeout=datetime.timedelta(seconds=10))
    model = nn.Sequential(nn.BatchNorm2d(CHANNELS, track_running_stats=False))
    plain = nn.BatchNorm2d(CHANNELS, track_running_stats=False).eval()
    model = convert_sync_batchnorm(model, env)
    model(torch.randn(4, CHANNELS, 3, 3) + env.rank)  # training: both ranks synchronize
    model.eval()
    max_diff = 0.0
    if env.rank == 0:
        for n in (5, 2, 7):
            x = torch.randn(n, CHANNELS, 3, 3) * 3 + 1
            max_diff = max(max_diff, float((model(x) - plain(x)).abs().max()))
    dist.barrier(group=patient_for_10s)
    return max_diff


def test_eval_without_running_statistics_uses_this_ranks_batch_and_communicates_nothing():
    assert run_workers(eval_without_running_stats_worker, 2, timeout_s=90) == [0.0, 0.0]


OFFSETS = (1e5, 1e6)


OFFSET_SIZES = (7, 9)


def offset_batch(offset):
    gen = torch.Generator().manual_seed(5)
    return torch.randn(sum(OFFSET_SIZES), CHANNELS, 4, 4, generator=gen, dtype=torch.float64) + offset


def offset_worker(env):
    lo = sum(OFFSET_SIZES[:env.rank])
    out = {}
    for offset in OFFSETS:
        bn = SyncBatchNorm(CHANNELS, momentum=1.0, world_size=env.world_size).double()  # running = this batch's
        bn(offset_batch(offset)[lo:lo + OFFSET_SIZES[env.rank]])
        out[offset] = {"mean": bn.running_mean, "var": bn.running_var}
    return out


def test_variance_of_a_mean_large_next_to_the_spread_keeps_its_digits():
    # E[x^2] - E[x]^2 lost 8.6e-7 (offset 1e5) and 2.0e-4 (1e6) of this variance; the parallel
    # combination keeps it to 5e-12 and 5e-11, as good as torch.var on the whole batch
    ranks = run_workers(offset_worker, 2, timeout_s=90)
    for offset in OFFSETS:
        x = offset_batch(offset)
        want_var = x.var(dim=(0, 2, 3), unbiased=True).numpy()
        want_mean = x.mean(dim=(0, 2, 3)).numpy()
        for got in ranks:
            assert np.max(np.abs(got[offset]["var"] - want_var) / want_var) < 1e-9, offset
            assert np.max(np.abs(got[offset]["mean"] - want_mean) / want_mean) < 1e-13, offset
        assert np.array_equal(ranks[0][offset]["var"], ranks[1][offset]["var"])


SUBGROUP_SIZES = (3, 4, 5)  # ranks 0 and 1 synchronize together; rank 2 alone


def subgroup_worker(env):
    pair, alone = dist.new_group([0, 1]), dist.new_group([2])  # every rank creates every group
    group = pair if env.rank < 2 else alone
    model = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(CHANNELS)), env, process_group=group)
    bn = model[0]
    affine_init(bn)
    lo = sum(SUBGROUP_SIZES[:env.rank])
    out = run_case(bn, (4, 4), SUBGROUP_SIZES, torch.float32, lo, lo + SUBGROUP_SIZES[env.rank])
    out["world_size"] = bn.world_size
    errors = []
    for kwargs in ({"process_group": pair}, {"process_group": group, "world_size": 3}):
        try:  # rank 2 is outside `pair`; no group here has 3 ranks
            SyncBatchNorm(CHANNELS, **kwargs)
        except ValueError as exc:
            errors.append(str(exc))
    out["errors"] = errors
    return out


def test_process_group_synchronizes_its_ranks_only():
    r0, r1, r2 = run_workers(subgroup_worker, 3, timeout_s=120)
    assert [r0["world_size"], r1["world_size"], r2["world_size"]] == [2, 2, 1]
    tol = DTYPES["float32"]
    for ranks, (lo, hi) in (([r0, r1], (0, 7)), ([r2], (7, 12))):
        bn = nn.BatchNorm2d(CHANNELS)
        affine_init(bn)
        ref = to_numpy(run_case(bn, (4, 4), SUBGROUP_SIZES, torch.float32, lo, hi))
        for step in range(STEPS):
            for name in ("y", "gx"):
                np.testing.assert_allclose(np.concatenate([r["steps"][step][name] for r in ranks]),
                                           ref["steps"][step][name], rtol=tol, atol=tol)
            for name in ("gw", "gb"):
                np.testing.assert_allclose(sum(r["steps"][step][name] for r in ranks),
                                           ref["steps"][step][name], rtol=tol, atol=tol)
        for r in ranks:
            np.testing.assert_allclose(r["running_var"], ref["running_var"], rtol=tol, atol=tol)
    assert "rank 2 is not a member" in r2["errors"][0]
    assert all("world_size=3 disagrees" in e for e in r0["errors"] + r1["errors"] + r2["errors"][1:])
    assert len(r0["errors"]) == 1 and len(r2["errors"]) == 2


# ------------------------------------------------------------ the CUDA path

def cuda_sync_worker(env, cases):
    """torch's nn.SyncBatchNorm over NCCL, as convert_sync_batchnorm picks on CUDA."""
    results = {}
    for shape_tail, sizes, dtype_name in cases:
        dtype = getattr(torch, dtype_name)
        model = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(CHANNELS) if len(shape_tail) < 2
                                                     else nn.BatchNorm2d(CHANNELS)), env)
        bn = model[0].to(env.device, dtype)
        assert isinstance(bn, nn.SyncBatchNorm)
        affine_init(bn)
        lo = sum(sizes[:env.rank])
        out = run_case(_OnDevice(bn, env.device), shape_tail, sizes, dtype, lo, lo + sizes[env.rank])
        results[(shape_tail, sizes, dtype_name)] = out
    return results


class _OnDevice(nn.Module):
    """Moves the CPU test data to the GPU and results back, so run_case serves both paths."""

    def __init__(self, bn, device):
        super().__init__()
        self.bn, self.device = bn, device
        self.weight, self.bias = bn.weight, bn.bias

    def forward(self, x):
        return _ToDevice.apply(x, self.bn, self.device)

    @property
    def running_mean(self):
        return self.bn.running_mean.cpu()

    @property
    def running_var(self):
        return self.bn.running_var.cpu()


class _ToDevice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bn, device):
        with torch.enable_grad():
            xd = x.detach().to(device).requires_grad_(True)
            y = bn(xd)
        ctx.saved = (xd, y)
        return y.detach().cpu()

    @staticmethod
    def backward(ctx, dy):
        xd, y = ctx.saved
        y.backward(dy.to(y.device))
        return xd.grad.cpu(), None, None


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="torch's SyncBatchNorm needs NCCL across 2 GPUs; this machine has fewer")
def test_cuda_path_agrees_with_the_cpu_reference():
    cases = [(t, s, "float32") for t, s in CASES if len(s) == 2 and 0 not in s]
    cuda = run_workers(cuda_sync_worker, 2, cases, timeout_s=180, device="cuda")
    cpu = run_workers(sync_worker, 2, cases, timeout_s=180)
    for key in cases:
        for rank in range(2):
            for step in range(STEPS):
                for name in ("y", "gx"):
                    np.testing.assert_allclose(cuda[rank][key]["steps"][step][name],
                                               cpu[rank][key]["steps"][step][name], rtol=1e-4, atol=1e-5)
