"""Predictions files, the inputs predict and evaluate read, and evaluate's
metrics, against scikit-learn's definitions."""

import io

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from dist_train.comm import Comm
from dist_train.data.inputs import csv_samples, image_size_of, npz_samples
from dist_train.data.loader import Batch
from dist_train.errors import DistTrainError
from dist_train.inference import Predictions
from dist_train.losses import build_loss
from dist_train.metrics import Detail, evaluate
from dist_train.tasks import Task
from tests.unit.test_bundle import spec_and_network


class Outputs(torch.nn.Module):
    """A 'model' whose outputs are given: evaluate's sums checked on known numbers."""

    def forward(self, x):
        return x


def detailed(logits, targets, batch, loss="cross_entropy", names=None):
    batches = [Batch(logits[i:i + batch], targets[i:i + batch]) for i in range(0, len(targets), batch)]
    return evaluate(Outputs(), batches, build_loss(loss), Comm(), "cpu", "classification", logits.shape[1],
                    Detail(logits.shape[1], 3, loss, names))


def test_evaluates_metrics_are_scikit_learns():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(211, 5, generator=gen) * 2
    targets = torch.randint(0, 5, (211,), generator=gen)
    targets[targets == 4] = 3  # class 4 never occurs: its recall is undefined (0, as zero_division=0)
    found = detailed(logits, targets, batch=50)
    y, p = targets.numpy(), logits.argmax(1).numpy()
    probs = torch.softmax(logits.double(), 1).numpy()
    assert found["confusion_matrix"] == skm.confusion_matrix(y, p, labels=range(5)).tolist()
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, p, labels=range(5), zero_division=0)
    for i, name in enumerate("01234"):
        assert found["precision"][name] == pytest.approx(precision[i], abs=1e-12)
        assert found["recall"][name] == pytest.approx(recall[i], abs=1e-12)
        assert found["f1"][name] == pytest.approx(f1[i], abs=1e-12)
        assert found["support"][name] == support[i]
    assert found["macro_f1"] == pytest.approx(skm.f1_score(y, p, average="macro", labels=range(5), zero_division=0))
    assert found["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(5)), rel=1e-9)
    assert found["top3_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=3, labels=range(5)))
    assert found["error"] == pytest.approx(1 - skm.accuracy_score(y, p))
    # the same over other batches: sums, not means of means
    again = detailed(logits, targets, batch=7)
    assert again["confusion_matrix"] == found["confusion_matrix"]
    assert again["log_loss"] == pytest.approx(found["log_loss"], rel=1e-12)


def test_r2_has_one_definition_per_output_averaged_as_scikit_learn_and_check_uses_it():
    from launcher.tools.check import _fit_score

    gen = torch.Generator().manual_seed(1)
    y = torch.randn(40, 3, generator=gen) * torch.tensor([1.0, 10.0, 100.0])
    outputs = y + torch.randn(40, 3, generator=gen) * torch.tensor([0.5, 1.0, 80.0])
    found = evaluate(Outputs(), [Batch(outputs, y)], build_loss("mse", "regression"), Comm(), "cpu", "regression", 3)
    expected = skm.r2_score(y.double().numpy(), outputs.double().numpy(), multioutput="uniform_average")
    assert found["r2"] == pytest.approx(expected, rel=1e-9)
    pooled = 1 - ((outputs - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()  # what `check` used to report
    assert abs(float(pooled) - expected) > 0.05  # the two definitions differ on these outputs
    assert _fit_score(Outputs(), outputs, y, Task.REGRESSION) == pytest.approx(expected, rel=1e-6)


def test_a_predictions_csv_has_a_row_per_sample_with_the_top_k_classes():
    outputs = np.array([[0.0, 2.0, 1.0], [3.0, 3.0, -1.0]], dtype=np.float32)
    found = Predictions(["a.png", "b.png"], outputs, "classification", "cross_entropy", ("x", "y", "z"))
    lines = found._csv(top_k=2).splitlines()
    assert lines[0] == "row,sample,class,class_name,probability,class_2,class_name_2,probability_2"
    assert lines[1].startswith("0,a.png,1,y,0.66524") and ",2,z,0.24472" in lines[1]
    assert lines[2].startswith("1,b.png,0,x,0.49") and ",1,y,0.49" in lines[2]  # a tie: the lower class first
    arrays = np.load(io.BytesIO(found._npz()))
    assert arrays["classes"].tolist() == [1, 0] and arrays["class_names"].tolist() == ["x", "y", "z"]
    values = Predictions(["0"], np.array([[1.5, -2.0]], dtype=np.float32), "regression", "mse", None, (2,))
    assert values._csv(1).splitlines() == ["row,sample,value_0,value_1", "0,0,1.5,-2.0"]


def table_spec(tmp_path):
    from dataclasses import replace

    spec, _, _, _ = spec_and_network()
    inputs = replace(spec.inputs, shape=(3,), dtype="float32",
                     source={"name": "csv", "features": ["a", "b", "c"], "target": "kind"})
    return replace(spec, inputs=inputs)


def test_a_csv_is_read_by_column_name_in_any_order_with_class_names(tmp_path):
    spec = table_spec(tmp_path)
    (tmp_path / "in.csv").write_text("c,kind,a,b\n3,b,1,2\n6,c,4,5\n")
    samples = csv_samples(tmp_path / "in.csv", spec, targets=True)
    x, y = samples.fetch(0, 2)
    assert x.tolist() == [[1, 2, 3], [4, 5, 6]] and y.tolist() == [1, 2] and samples.names == ["line 2", "line 3"]
    (tmp_path / "bad.csv").write_text("c,kind,a,b\n3,purple,1,2\n")
    with pytest.raises(DistTrainError, match="'purple' is not a class of the model"):
        csv_samples(tmp_path / "bad.csv", spec, targets=True)
    (tmp_path / "cells.csv").write_text("a,b,c\n1,x,3\n1,2,\n")
    with pytest.raises(DistTrainError, match=r"2 cells are not \(finite\) numbers.*line 2, column 'b': 'x'; "
                                             r"line 3, column 'c': ''"):
        csv_samples(tmp_path / "cells.csv", spec, targets=False)


def test_arrays_and_images_are_checked_against_the_model(tmp_path):
    spec = table_spec(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(DistTrainError, match="holds inputs only; evaluation needs targets too"):
        npz_samples(tmp_path / "x.npy", spec, targets=True)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DistTrainError, match="not a readable .npy/.npz of numbers"):
        npz_samples(tmp_path / "objects.npy", spec, targets=False)
    with pytest.raises(DistTrainError, match="not on images"):
        image_size_of(spec)
