"""`dist-train check` in this process: passes on the shipped configs, fails
with the right hint on deliberately broken ones, and its gradcheck catches a
wrong backward. (The command as a subprocess: tests/e2e/test_check.py.)"""

import io

import pytest

from launcher.tools.check import check_gradients, run_checks
from dist_train.config import load_config
from tests.conftest import REPO
from tests.helpers import check_line


def checks(config, *overrides):
    out = io.StringIO()
    code = run_checks(load_config(f"{REPO}/{config}", list(overrides)), out=out)
    return code, out.getvalue().splitlines()


@pytest.mark.parametrize("config", ["configs/quickstart.yaml", "configs/digits_mlp.yaml", "configs/digits_cnn.yaml",
                                    "configs/cpu_test.yaml"])
def test_check_passes_on_the_shipped_configs(config):
    code, lines = checks(config)
    assert code == 0, "\n".join(lines)
    assert [text[:4] for text in lines[:3]] == ["PASS"] * 3
    loss = float(check_line(lines, "initial loss").split()[3])
    assert "expected about ln(" in check_line(lines, "initial loss") and 0.5 < loss < 5.0
    assert "100% training accuracy" in check_line(lines, "overfit 50 examples")
    assert lines[-1] == "3 passed, 0 failed"


def test_unnormalized_inputs_fail_the_initial_loss_check_with_the_normalization_hint():
    code, lines = checks("configs/quickstart.yaml", "data.normalize=none")
    assert code == 1
    fail = lines.index(check_line(lines, "initial loss"))
    assert lines[fail].startswith("FAIL")
    hint = lines[fail + 1]
    assert hint.startswith("      hint: inputs not normalized") and "set data.normalize=auto" in hint
    assert not any("learning rate" in text for text in lines)


def test_saturated_initialization_is_named():
    code, lines = checks("configs/quickstart.yaml", "model.activation=tanh", "model.init=gaussian", "model.init_std=1.0")
    assert code == 1
    fail = lines.index(check_line(lines, "initial loss"))
    assert lines[fail].startswith("FAIL") and lines[fail + 1].startswith("      hint: saturated initialization: ")
    assert "Tanh units are saturated" in lines[fail + 1]


def test_gradcheck_catches_a_wrong_backward(monkeypatch):
    from dist_train import sync_batchnorm

    assert check_gradients().passed
    right = sync_batchnorm._SyncBatchNormFunction.backward

    def one_percent_off(ctx, dy):  # the input gradient, 1% too large
        grad_x, *rest = right(ctx, dy)
        return (grad_x * 1.01, *rest)

    monkeypatch.setattr(sync_batchnorm._SyncBatchNormFunction, "backward", staticmethod(one_percent_off))
    result = check_gradients()
    assert result.passed is False
    assert "with respect to the input" in result.summary and "sync_batchnorm.py" in result.hints[0]
