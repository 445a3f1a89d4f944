"""Benchmark: time to the first step of a 100k-item custom dataset on 2
workers, before and after the ranks share the pass over the training split
that computes its normalization statistics (issue 25).

    python tests/benchmarks/bench_custom_stats.py [--rounds 3] [--items 100000] [--before REV]

The dataset does what a user's dataset of image files does: every item is a
1x28x28 grey image stored as PNG bytes (all in one file on disk, read
through a memory map) and decoded with Pillow in `__getitem__` (the
benchmark first measures this cost per item in one process), with a class.
It says it has 10 classes, so neither version makes a pass for the number of
classes. Training split 100,000 items, validation and test 2,000 each.

A job: `torch.distributed.run --standalone --nproc-per-node 2` runs this file
with --worker (one thread per worker, as torchrun sets), which builds the
run's parts from a config (data.source: custom, an MLP 784-64-10, global
batch 128, data.loader_workers 0 or 1) and trains. Time to the first step:
from a barrier right after the process group starts to the `train` record of
step 1 on rank 0 (train.log_every_steps 1; the record follows the first
optimizer step and its loss all-reduce), so interpreter start, imports and
rendezvous, the same for all, are left out. "Parts built" is the part of it
spent building data (statistics pass included), model and strategy.

Three jobs: "before", the library as it was at --before (default: the parent
of the commit that brought in the shared pass, found with `git log -S`),
exported with `git archive` into a temporary directory and put first on
PYTHONPATH; "after", this tree; "no pass", this tree with data.normalize:
none, the same job with no statistics to compute, so before - no pass and
after - no pass estimate what the pass itself costs. They take turns (each
goes first in every third round), `--rounds` of each; medians reported.
Results: tests/benchmarks/results/custom_stats.json."""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent.parent
SIZES = {"train": None, "val": 2000, "test": 2000}  # train: --items


# ----------------------------------------------------------------- the dataset (user code: data.class_path)

class PngItems:
    """Items decoded from PNG bytes held in one file (a memory map, as a data
    set on a shared file system would be read)."""

    num_classes = 10

    def __init__(self, root: str, split: str) -> None:
        self.blob = np.load(Path(root) / f"{split}-png.npy", mmap_mode="r")
        self.offsets = np.load(Path(root) / f"{split}-offsets.npy")
        self.targets = np.load(Path(root) / f"{split}-targets.npy")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        png = self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes()
        pixels = np.asarray(Image.open(io.BytesIO(png)), dtype=np.uint8)
        return torch.from_numpy(pixels.reshape(1, 28, 28).copy()), int(self.targets[i])


def make_splits(root: str):
    return tuple(PngItems(root, split) for split in SIZES)


def write_data(root: Path, items: int) -> None:
    """Class-dependent grey images (a bright square whose place is the class, on noise), as PNG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in {**SIZES, "train": items}.items():
        targets = rng.integers(0, 10, n)
        pngs, offsets = [], [0]
        for target in targets:
            image = rng.integers(0, 120, (28, 28), dtype=np.uint8)
            row, col = divmod(int(target), 5)
            image[4 + 12 * row:12 + 12 * row, 2 + 5 * col:7 + 5 * col] = 230
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            pngs.append(buf.getvalue())
            offsets.append(offsets[-1] + len(pngs[-1]))
        np.save(root / f"{split}-png.npy", np.frombuffer(b"".join(pngs), dtype=np.uint8))
        np.save(root / f"{split}-offsets.npy", np.array(offsets, dtype=np.int64))
        np.save(root / f"{split}-targets.npy", targets.astype(np.int64))


# ----------------------------------------------------------------- one worker of a job

def worker(out: Path, root: str, loader_workers: int, normalize: str) -> None:
    import torch

    from dist_train.comm import Comm
    from dist_train.config import load_config
    from dist_train.distributed import process_group
    from dist_train.env import DistEnv
    from dist_train.parts import build_parts
    from dist_train.resolve import resolve
    from dist_train.tracking import NullTracker
    from dist_train.trainer import Trainer

    class FirstStep(NullTracker):
        first: float | None = None

        def log(self, event, **values):
            if event == "train" and self.first is None:
                self.first = time.perf_counter()

    torch.set_num_threads(1)
    env = DistEnv.from_env(device="cpu")
    cfg = load_config(None, ["data.source=custom", f"data.class_path={HERE}:make_splits",
                             f"data.init_args={{root: {root}}}", f"data.loader_workers={loader_workers}",
                             f"data.normalize={normalize}",
                             "model.hidden_sizes=[64]", "train.global_batch_size=128", "train.max_steps=1",
                             "train.log_every_steps=1", "dist.device=cpu", "wandb.mode=disabled"])
    with process_group(env, 300):
        comm = Comm.of(env)
        comm.barrier()
        start = time.perf_counter()
        resolved = resolve(cfg, env.world_size)
        parts = build_parts(cfg, env, resolved, comm)
        built = time.perf_counter()
        tracker = FirstStep()
        Trainer(cfg, env, resolved, parts, comm, tracker=tracker).fit()
        if env.is_rank0:
            out.write_text(json.dumps({"parts_built_s": built - start, "first_step_s": tracker.first - start,
                                       "normalize": parts.data.input_spec.normalize}))
        # as dist_train.run ends a job: DDP's reducer freed while the group exists, every rank done before teardown
        del parts
        gc.collect()
        comm.barrier()


# ----------------------------------------------------------------- the jobs

def before_rev() -> str:
    added = subprocess.run(["git", "log", "--format=%H", "-S", "def scan_training_split", "--",
                            "dist_train/data/custom.py"], capture_output=True, text=True, cwd=REPO, check=True)
    commits = added.stdout.split()
    if not commits:
        sys.exit("no commit brings in scan_training_split; name the old version with --before REV")
    return f"{commits[-1]}~1"


def export(rev: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, "dist_train"], capture_output=True, cwd=REPO, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def job(tree: Path, root: Path, loader_workers: int, normalize: str, scratch: Path) -> dict:
    out = scratch / f"job-{time.monotonic_ns()}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(HERE), "--worker", str(out), "--data", str(root), "--loader-workers", str(loader_workers),
                    "--normalize", normalize],
                   check=True, cwd=scratch, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--before", default=None, help="the old version (a git revision)")
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--normalize", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.loader_workers[0], args.normalize)
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="bench-custom-stats-"))
    rev = args.before or before_rev()
    # (library, data.normalize): "no pass" is the floor, the same job without statistics to compute
    jobs = {"before": (export(rev, scratch / "before"), "auto"), "after": (REPO, "auto"), "no pass": (REPO, "none")}
    root = scratch / "data"
    root.mkdir()
    started = time.perf_counter()
    write_data(root, args.items)
    short = subprocess.run(["git", "rev-parse", "--short", rev], capture_output=True, text=True, cwd=REPO).stdout
    print(f"{args.items:,} training items as PNG bytes in {time.perf_counter() - started:.1f} s; before = "
          f"{short.strip()}", flush=True)
    items = PngItems(str(root), "val")
    items[0]  # its imports (torch, Pillow) are not the item's cost
    started = time.perf_counter()
    for i in range(len(items)):
        items[i]
    per_item_us = (time.perf_counter() - started) / len(items) * 1e6
    print(f"__getitem__: {per_item_us:.0f} us an item (one process, {len(items):,} items)", flush=True)
    found: dict[str, dict[str, list[dict]]] = {}
    for workers in args.loader_workers:
        for round_ in range(args.rounds):
            names = list(jobs)
            for name in names[round_ % 3:] + names[:round_ % 3]:  # each goes first, second and third in turn
                tree, normalize = jobs[name]
                result = job(tree, root, workers, normalize, scratch)
                found.setdefault(f"loader_workers={workers}", {}).setdefault(name, []).append(result)
                print(f"loader_workers={workers} round {round_} {name:<6} first step {result['first_step_s']:6.2f} s "
                      f"(parts built {result['parts_built_s']:6.2f} s)", flush=True)
    summary = {case: {name: {key: statistics.median(r[key] for r in runs) for key in ("first_step_s", "parts_built_s")}
                      for name, runs in by_name.items()} for case, by_name in found.items()}
    out = HERE.parent / "results" / "custom_stats.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"items": args.items, "before": rev, "getitem_us": per_item_us, "medians": summary,
                               "runs": found}, indent=2))
    print(f"\n{'case':<18}{'before':>10}{'after':>10}{'no pass':>10}{'before / after':>16}"
          f"{'pass before':>13}{'pass after':>12}   (median seconds to the first step)")
    for case, by_name in summary.items():
        b, a, floor = (by_name[name]["first_step_s"] for name in ("before", "after", "no pass"))
        print(f"{case:<18}{b:>10.2f}{a:>10.2f}{floor:>10.2f}{b / a:>15.2f}x{b - floor:>13.2f}{a - floor:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
