"""`dist-train predict` and `dist-train evaluate`.

The model and the inputs are checked in this process first (a bundle of an
unknown format, changed model code, a CSV with a wrong column or a text cell,
inputs of the wrong shape: one line, exit status 2, nothing written). Then
the work runs here, or, with --nproc-per-node N (or several nodes), in
workers started by torch's elastic launcher (`launcher.inference_worker`),
each predicting its share of the samples; rank 0 writes the file and says
what was done."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from dist_train.errors import DistTrainError
from launcher.elastic import planned_world_size


def _same_numbers_on_any_threads() -> None:
    """MKL splits a matrix product differently with another number of threads,
    which changes the last bits of some outputs: one process (all its
    threads) and N workers (one thread each) would write different files.
    MKL's conditional numerical reproducibility (STRICT) removes that for a
    few percent of speed; workers inherit it. A value the user set is kept."""
    import os

    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def _check_numbers(args: argparse.Namespace) -> None:
    if args.top_k < 1:
        raise DistTrainError(f"--top-k {args.top_k} must be at least 1")
    if args.batch_size < 1:
        raise DistTrainError(f"--batch-size {args.batch_size} must be at least 1")


def _open(args: argparse.Namespace, targets: bool) -> tuple[Any, Any]:
    """The model and the samples, every check made."""
    from dist_train.bundle import load_model
    from dist_train.data.inputs import open_samples, run_split

    model = load_model(args.model, allow_changed_code=args.allow_changed_code, best=args.best)
    inputs = args.inputs if not targets else args.data
    if not inputs:
        return model, run_split(model.spec, args.split)
    return model, open_samples(inputs, model.spec, args.split, targets)


def _several_workers(args: argparse.Namespace) -> bool:
    return planned_world_size(args) != 1


def _launch(args: argparse.Namespace) -> int:
    from launcher.elastic import launch

    return launch(args, args.argv[0], args.argv[1:], run_dir=None, worker="launcher.inference_worker")


def _job_in_this_process(args: argparse.Namespace, targets: bool, work: Any) -> int:
    """Open the model and samples on every rank (agreed: a mistake seen by one
    rank stops them all with its message), then `work(env, comm, model, samples)`."""
    from dist_train.inference import _job

    with _job() as (env, comm):
        found, error = None, None
        try:
            found = _open(args, targets)
        except DistTrainError as exc:
            error = exc
        comm.raise_together(error)
        model, samples = found
        return work(env, comm, model, samples)


def run_predict(args: argparse.Namespace, in_worker: bool = False) -> int:
    from dist_train.inference import Predictions, check_output, predict_outputs

    _same_numbers_on_any_threads()
    _check_numbers(args)
    check_output(Path(args.out))
    if not in_worker and _several_workers(args):
        _open(args, targets=False)  # every mistake that can be found here is, before any worker starts
        return _launch(args)

    def work(env: Any, comm: Any, model: Any, samples: Any) -> int:
        comm.barrier()
        start = time.perf_counter()
        outputs = predict_outputs(model, samples, env, comm, args.batch_size, progress=True)
        seconds = time.perf_counter() - start
        if env.is_rank0:
            spec = model.spec
            Predictions(samples.names, outputs, spec.task, spec.loss, spec.class_names,
                        spec.target_shape).write(args.out, args.top_k)
            workers = f" with {env.world_size} workers" if env.world_size > 1 else ""
            print(f"predicted {samples.count} samples of {samples.what} in {seconds:.2f}s "
                  f"({samples.count / max(seconds, 1e-9):,.0f} samples/s){workers}; wrote {args.out}", flush=True)
        comm.barrier()
        return 0

    return _job_in_this_process(args, False, work)


def run_evaluate(args: argparse.Namespace, in_worker: bool = False) -> int:
    from dist_train.inference import evaluate_samples

    _same_numbers_on_any_threads()
    _check_numbers(args)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise DistTrainError(f"--out {out} is a file; give a directory for metrics.json and the confusion matrix")
    if not in_worker and _several_workers(args):
        _open(args, targets=True)
        return _launch(args)

    def work(env: Any, comm: Any, model: Any, samples: Any) -> int:
        metrics = evaluate_samples(model, samples, env, comm, args.batch_size, args.top_k)
        if env.is_rank0:
            print(describe(metrics, model, samples.what), flush=True)
            if out is not None:
                write_report(out, metrics, model, samples.what)
                print(f"wrote {out / 'metrics.json'}" + (f", {out / 'confusion_matrix.csv'} and "
                                                        f"{out / 'confusion_matrix.png'}" if "confusion_matrix" in
                                                        metrics else ""), flush=True)
        return 0

    return _job_in_this_process(args, True, work)


# ------------------------------------------------------------ evaluate's report

def describe(metrics: dict[str, Any], model: Any, what: str) -> str:
    """The metrics as a reader wants them: the headline numbers on one line,
    then per class precision, recall, F1 and support."""
    names = [k for k in ("loss", "accuracy", "error", "mse", "mae", "r2", "log_loss") if k in metrics]
    names += sorted(k for k in metrics if k.startswith("top") and isinstance(metrics[k], float))
    names += [k for k in ("macro_precision", "macro_recall", "macro_f1") if k in metrics]
    head = ", ".join(f"{k} {metrics[k]:.6g}" for k in names)
    step = (model.info.get("checkpoint") or {}).get("step")
    lines = [f"evaluated {'the model' if step is None else f'the model of step {step}'} on {what} "
             f"({metrics['count']} samples): {head}"]
    if "confusion_matrix" in metrics:
        width = max(5, *(len(n) for n in metrics["class_names"]))
        lines.append(f"  {'class':<{width}}  precision  recall     f1  support")
        for n in metrics["class_names"]:
            lines.append(f"  {n:<{width}}  {metrics['precision'][n]:9.4f}  {metrics['recall'][n]:6.4f}  "
                         f"{metrics['f1'][n]:5.4f}  {metrics['support'][n]:7d}")
    return "\n".join(lines)


def write_report(out: Path, metrics: dict[str, Any], model: Any, what: str) -> None:
    from dist_train.atomic import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    record = {"data": what, "checkpoint": model.info.get("checkpoint"), "metrics": metrics}
    write_atomic(out / "metrics.json", json.dumps(record, indent=1) + "\n")
    if "confusion_matrix" in metrics:
        from launcher.tools.confusion import draw_confusion, confusion_csv

        write_atomic(out / "confusion_matrix.csv", confusion_csv(metrics))
        draw_confusion(metrics, out / "confusion_matrix.png", title=f"{what}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run through `dist-train predict` or `dist-train evaluate`")
