"""`dist-train check`: the sanity checks the course asks for before any long run,
in one process.

1. The loss at initialization is close to its expected value (ln C for
   cross-entropy over C classes: a network that knows nothing predicts
   uniformly). Far above it, the network is confidently wrong from the start.
2. The model can overfit a few examples (50 by default) to ~100% training
   accuracy, with dropout and weight decay off. If it cannot, something is
   wrong before any question of generalization arises.
3. `torch.autograd.gradcheck` compares the hand-written backward of
   synchronized batch norm with finite differences, in float64.

When a check fails it says why it may have (the course's list): inputs not
normalized, a saturated initialization, a learning rate that is too large."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import IO

import torch
from torch import nn

from dist_train.comm import Comm
from dist_train.config import Config, replace
from dist_train.data import build_data
from dist_train.env import DistEnv
from dist_train.losses import build_loss
from dist_train.models import build_model
from dist_train.optim import build_optimizer
from dist_train.resolve import resolve
from dist_train.rng import seed_everything
from dist_train.strategy import Precision
from dist_train.strategy.single import SingleStrategy
from dist_train.tasks import CLASSIFICATION, Task

PROBE_SAMPLES = 512  # training examples the initial loss and the input statistics are measured on
# The highest initial loss that passes: that of outputs with this std, independent
# of the labels. Kaiming-initialized networks start with output std about 1 to 2
# (ln C + 0.4 to 1.5 nats for C = 10); unnormalized inputs or a saturated
# initialization give std 10 and more.
INIT_OUTPUT_STD_LIMIT = 3.0
OVERFIT_ACCURACY = 0.99
SATURATED_FRACTION = 0.5


@dataclass
class CheckResult:
    name: str
    passed: bool | None  # None: skipped
    summary: str
    hints: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        word = "SKIP" if self.passed is None else "PASS" if self.passed else "FAIL"
        return [f"{word}  {self.name}: {self.summary}", *(f"      hint: {h}" for h in self.hints)]


@dataclass
class InitDiagnostics:
    """What the network and its inputs look like at initialization."""
    input_mean: float
    input_std: float
    logits_std: float
    saturated: dict[str, float]  # activation name -> fraction of saturated (tanh, sigmoid) or dead (relu) units


def run_checks(cfg: Config, subset: int = 50, max_steps: int = 500, out: IO[str] = sys.stdout) -> int:
    """Run the three checks, print one PASS/FAIL line each; 0 when all pass, 1 otherwise."""
    env = DistEnv.from_env({}, device=cfg.dist.device)  # one process, whatever launched us
    data = build_data(cfg, env, resolve(cfg, 1), Comm())
    inputs, targets = training_examples(data, max(subset, PROBE_SAMPLES))
    shape, outputs, task = data.input_shape, data.num_outputs, data.task
    diag = diagnose_init(cfg, inputs, targets, shape, outputs, task)
    results = [
        check_initial_loss(cfg, inputs, targets, shape, outputs, diag, task),
        check_overfit(cfg, inputs[:subset], targets[:subset], shape, outputs, max_steps, diag, task),
        check_gradients(),
    ]
    for result in results:
        for line in result.lines():
            print(line, file=out, flush=True)
    failed = sum(r.passed is False for r in results)
    passed = sum(r.passed is True for r in results)
    print(f"{passed} passed, {failed} failed" + (f", {len(results) - passed - failed} skipped" if passed + failed < len(results) else ""),
          file=out, flush=True)
    return 1 if failed else 0


def training_examples(data: object, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` training examples in epoch 0's order (a random sample),
    through the run's own loader: normalized exactly as training sees them."""
    inputs, targets, have = [], [], 0
    for step in data.train.epoch(0):  # type: ignore[attr-defined]
        for batch in step.micro_batches:
            inputs.append(batch.inputs)
            targets.append(batch.targets)
            have += int(batch.targets.shape[0])
        if have >= count:
            break
    return torch.cat(inputs)[:count], torch.cat(targets)[:count]


def _fresh_model(cfg: Config, input_shape: tuple[int, ...], num_classes: int, device: torch.device,
                 task: Task = CLASSIFICATION) -> nn.Module:
    seed_everything(cfg.train.seed)  # the weights training would start from
    return build_model(cfg.model, input_shape, num_classes, task).to(device)


# ------------------------------------------------------------ 1. initial loss

def expected_initial_loss(loss: str, num_classes: int) -> tuple[float, str] | None:
    """The loss of a network that predicts every class equally (zero logits)."""
    if loss == "cross_entropy":
        return math.log(num_classes), f"ln({num_classes})"
    if loss == "binary_cross_entropy":
        return math.log(2.0), "ln(2)"
    return None  # mse depends on the scale of the initial outputs: no fixed value


def loss_of_random_outputs(loss_fn: object, num_classes: int, std: float, samples: int = 100_000) -> float:
    """The mean loss of outputs drawn N(0, std^2) independently of the labels
    (a fixed seed: the same bound every time)."""
    gen = torch.Generator().manual_seed(0)
    outputs = torch.randn(samples, num_classes, generator=gen, dtype=torch.float64) * std
    labels = torch.randint(num_classes, (samples,), generator=gen)
    return float(loss_fn(outputs, labels)) / samples  # type: ignore[operator]


def check_initial_loss(cfg: Config, inputs: torch.Tensor, targets: torch.Tensor, input_shape: tuple[int, ...],
                       num_classes: int, diag: InitDiagnostics, task: Task = CLASSIFICATION) -> CheckResult:
    name = "initial loss"
    expected = expected_initial_loss(cfg.train.loss, num_classes) if task.classifies else None
    if expected is None:
        return CheckResult(name, None, f"{cfg.train.loss} has no fixed expected value at initialization")
    value, formula = expected
    loss_fn = build_loss(cfg.train.loss)
    model = _fresh_model(cfg, input_shape, num_classes, inputs.device)
    model.train()  # batch norm on batch statistics, as the first training step sees it
    with torch.no_grad():
        loss = float(loss_fn(model(inputs), targets)) / len(targets)
    low, high = value / 2, loss_of_random_outputs(loss_fn, num_classes, INIT_OUTPUT_STD_LIMIT)
    summary = (f"{loss:.3f} on {len(targets)} training examples, expected about {formula} = {value:.3f} for "
               f"{cfg.train.loss.replace('_', '-')} (pass from {low:.3f} up to {high:.3f}, the loss of untrained "
               f"outputs with std {INIT_OUTPUT_STD_LIMIT:g}; these have std {diag.logits_std:.2g})")
    if low <= loss <= high:
        return CheckResult(name, True, summary)
    hints = init_hints(cfg, diag)
    if loss < low:
        hints.append("a loss this low before any training means the task is trivial or the labels leak into the inputs")
    elif not hints:
        hints.append(f"the outputs at initialization have std {diag.logits_std:.2f}: start the last layer's weights "
                     f"smaller (model.init=xavier_uniform or kaiming, or a smaller model.init_std)")
    return CheckResult(name, False, summary, hints)


def diagnose_init(cfg: Config, inputs: torch.Tensor, targets: torch.Tensor, input_shape: tuple[int, ...],
                  num_classes: int, task: Task = CLASSIFICATION) -> InitDiagnostics:
    model = _fresh_model(cfg, input_shape, num_classes, inputs.device, task)
    model.train()
    saturated: dict[str, list[float]] = {}

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        units = out.detach().reshape(out.shape[0], -1)
        if isinstance(module, nn.Tanh):
            frac = (units.abs() > 0.99).float().mean()
        elif isinstance(module, nn.Sigmoid):
            frac = ((units < 0.01) | (units > 0.99)).float().mean()
        elif isinstance(module, (nn.ReLU, nn.LeakyReLU)):
            frac = (units <= 0).all(dim=0).float().mean()  # dead: active for none of the examples
        else:
            return
        saturated.setdefault(type(module).__name__, []).append(float(frac))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        logits = model(inputs)
    for h in handles:
        h.remove()
    return InitDiagnostics(float(inputs.mean()), float(inputs.std()), float(logits.std()),
                           {k: sum(v) / len(v) for k, v in saturated.items()})


def init_hints(cfg: Config, diag: InitDiagnostics) -> list[str]:
    """The course's causes that the inputs and the initial network show."""
    hints = []
    if abs(diag.input_mean) > 1.0 or not 0.2 <= diag.input_std <= 3.0:
        how = ("data.normalize is none: set data.normalize=auto (per_feature for tabular inputs, per_channel for "
               "images)" if cfg.data.normalize == "none"
               else f"they are far from mean 0, std 1 even with data.normalize={cfg.data.normalize}: check the data")
        hints.append(f"inputs not normalized: mean {diag.input_mean:.3g}, std {diag.input_std:.3g}; {how}")
    for act, frac in sorted(diag.saturated.items()):
        if frac > SATURATED_FRACTION:
            what = "never active (dead)" if act in ("ReLU", "LeakyReLU") else "saturated (output within 0.01 of its limits)"
            hints.append(f"saturated initialization: {frac:.0%} of the {act} units are {what} at initialization, so "
                         f"their gradients vanish; use model.init=xavier_uniform (tanh, sigmoid) or kaiming (relu), "
                         f"or a smaller model.init_std (now model.init={cfg.model.init})")
    return hints


# ------------------------------------------------------------ 2. overfit a subset

def check_overfit(cfg: Config, inputs: torch.Tensor, targets: torch.Tensor, input_shape: tuple[int, ...],
                  num_classes: int, max_steps: int, diag: InitDiagnostics, task: Task = CLASSIFICATION) -> CheckResult:
    n = len(targets)
    name = f"overfit {n} examples"
    # regularization off: the question is whether the model can fit at all
    cfg = replace(cfg, **{"model.dropout": 0.0, "optim.weight_decay": 0.0})
    model = _fresh_model(cfg, input_shape, num_classes, inputs.device, task)
    # the training step every strategy takes (clipping, the non-finite guard), in one process
    strategy = SingleStrategy(model, build_optimizer(cfg.optim, model), Precision("fp32", str(inputs.device)))
    loss_fn = build_loss(cfg.train.loss, task)
    batch = min(n, cfg.train.global_batch_size)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    order, at = torch.randperm(n, generator=gen), 0
    losses: list[float] = []
    accuracy, steps = _fit_score(model, inputs, targets, task), 0
    while steps < max_steps and accuracy < OVERFIT_ACCURACY:
        if at + batch > n:  # full batches only (batch norm needs more than one example)
            order, at = torch.randperm(n, generator=gen), 0
        idx = order[at:at + batch].to(inputs.device)
        at += batch
        model.train()
        losses.append(float(strategy.micro_batch(inputs[idx], targets[idx], loss_fn, batch, last=True)))
        steps += 1
        if not strategy.step(cfg.train.grad_clip_norm).applied:
            break  # a non-finite loss or gradient: the weights were left as they were
        if steps % 10 == 0 or steps == max_steps:
            accuracy = _fit_score(model, inputs, targets, task)
    first, last = losses[0] if losses else float("nan"), losses[-1] if losses else float("nan")
    score = "training accuracy" if task.classifies else "training R^2"
    summary = (f"{accuracy:.0%} {score} after {steps} steps of {batch} examples (loss {first:.3g} -> "
               f"{last:.3g}; dropout and weight decay off)")
    if accuracy >= OVERFIT_ACCURACY:
        return CheckResult(name, True, summary)
    hints = []
    lr = cfg.optim.lr
    if not math.isfinite(last):
        hints.append(f"learning rate too large: the loss became non-finite at step {steps}; try optim.lr={lr / 10:g}")
    elif last >= first or max(losses) > 2 * first:
        hints.append(f"learning rate too large: the loss went from {first:.3g} up to {max(losses):.3g} instead of "
                     f"falling; try optim.lr={lr / 10:g}")
    hints += init_hints(cfg, diag)
    if not hints:
        hints.append(f"the loss fell ({first:.3g} -> {last:.3g}) but not far enough in {steps} steps: try --steps "
                     f"{2 * max_steps}, a larger optim.lr than {lr:g}, or a larger model")
    return CheckResult(name, False, summary + f", expected at least {OVERFIT_ACCURACY:.0%}", hints)


def _fit_score(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, task: Task) -> float:
    """Training accuracy (classes) or R^2 (real values) on the subset, as the
    run's metrics define them (dist_train.metrics: R^2 per output, averaged)."""
    from dist_train.data.loader import Batch
    from dist_train.metrics import evaluate

    model.eval()
    with torch.no_grad():
        if not torch.isfinite(model(inputs)).all():
            return 0.0
    loss = build_loss(task.losses[0], task)  # any of the task's: only the score is read
    found = evaluate(model, [Batch(inputs, targets)], loss, Comm(), str(inputs.device), task)
    score = found[task.score]
    return score if math.isfinite(score) else 0.0


# ------------------------------------------------------------ 3. gradcheck

GRADCHECK_SHAPES = ((8, 3), (4, 3, 5), (3, 2, 4, 4))  # BatchNorm1d on (N, C) and (N, C, L); BatchNorm2d


def check_gradients() -> CheckResult:
    """gradcheck of synchronized batch norm's hand-written backward (the
    project's one custom autograd function) for input, weight and bias, through
    the module as training calls it. One process: the cross-rank reductions are
    the identity here (tests/integration/test_sync_batchnorm.py checks them across processes)."""
    from torch.autograd.gradcheck import GradcheckError

    from dist_train.sync_batchnorm import SyncBatchNorm

    name = "gradcheck"
    gen = torch.Generator().manual_seed(0)
    for shape in GRADCHECK_SHAPES:
        channels = shape[1]
        bn = SyncBatchNorm(channels, world_size=1).double().train()
        with torch.no_grad():
            bn.weight.copy_(torch.rand(channels, generator=gen, dtype=torch.float64) + 0.5)
            bn.bias.copy_(torch.randn(channels, generator=gen, dtype=torch.float64))
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5).requires_grad_(True)

        # weight and bias are the module's own parameters, passed so that gradcheck
        # perturbs them in place and differentiates with respect to them too
        def fn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bn: nn.Module = bn) -> torch.Tensor:
            return bn(x)

        try:
            ok = torch.autograd.gradcheck(fn, (x, bn.weight, bn.bias), eps=1e-6, atol=1e-6, rtol=1e-5)
            detail = ""
        except GradcheckError as exc:  # "Jacobian mismatch for output 0 with respect to input 1,"
            ok, detail = False, str(exc).splitlines()[0].rstrip(",").replace("input 0", "the input").replace(
                "input 1", "the weight").replace("input 2", "the bias")
        if not ok:
            return CheckResult(name, False, f"synchronized batch norm's backward disagrees with finite differences "
                                            f"for input shape {shape} in float64: {detail}",
                               ["the hand-written backward in dist_train/sync_batchnorm.py is wrong; do not train "
                                "with model.sync_batchnorm=true until it is fixed"])
    shapes = ", ".join(str(s) for s in GRADCHECK_SHAPES)
    return CheckResult(name, True, f"synchronized batch norm's backward (input, weight, bias) matches finite "
                                   f"differences in float64 for shapes {shapes}")
