"""Sharded data sets on disk, without worker processes: prepare (bit-identical,
deterministic, safe to rerun, MNIST's IDX files, the built-in sets as in
memory), shards that do not divide among readers refused, the training
split's statistics, bad shards named before training, rebatching.
(Streaming to real processes: tests/integration/test_shards.py.)"""

import gzip
import hashlib
import json
import struct

import numpy as np
import pytest
import torch

from dist_train.comm import Comm
from dist_train.config import DataConfig
from dist_train.data.normalization import Normalizer
from dist_train.data.prepare import PrepareOptions, prepare
from dist_train.data.shards import iter_blocks, load_manifest, write_dataset
from dist_train.data.sources import build_splits
from dist_train.data.stream import ShardData, ShardTrainLoader, open_manifest
from dist_train.env import DistEnv
from dist_train.errors import DistTrainError
from tests.helpers import corrupt, data_cfg, indexed_dataset


# ----------------------------------------------------------------- prepare

def test_prepare_round_trip_is_bit_identical(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {s: (rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n))
              for s, n in (("train", 700), ("val", 90), ("test", 110))}
    manifest = write_dataset(tmp_path / "ds", "rt", arrays, 10, {"train": 4, "val": 2, "test": 2}, block_size=100)
    for split, (x, y) in arrays.items():
        xs, ys = zip(*(blk for info in manifest.splits[split] for blk in iter_blocks(manifest.root / info.file)))
        assert np.array_equal(np.concatenate(xs), x) and np.concatenate(xs).dtype == np.uint8
        assert np.array_equal(np.concatenate(ys), y)
    assert manifest.num_samples("train") == 700 and [s.samples for s in manifest.splits["train"]] == [175] * 4
    assert manifest.input_shape == (1, 28, 28) and manifest.num_classes == 10
    stats = manifest.normalization["per_channel"]
    assert stats["mean"][0] == pytest.approx(arrays["train"][0].mean()) and stats["std"][0] == pytest.approx(arrays["train"][0].std())


def test_prepare_is_deterministic_and_safe_to_rerun(tmp_path):
    opts = PrepareOptions(out=tmp_path / "digits")
    first = prepare("digits", opts)
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in first.root.iterdir()}
    prepare("digits", opts)  # again, over the existing set
    again = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in first.root.iterdir()}
    assert digests == again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]  # no partial or old directories left
    assert json.loads((first.root / "manifest.json").read_text())["splits"]["train"]["samples"] == 1257


def test_prepare_refuses_to_overwrite_a_directory_that_is_not_a_data_set(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(DistTrainError, match="is not a prepared data set"):
        prepare("digits", PrepareOptions(out=tmp_path / "mine"))
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def write_idx(path, array, compress):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [True, False])
def test_prepare_reads_mnist_format_idx_files(tmp_path, compress):
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    src.mkdir()
    ext = ".gz" if compress else ""
    train_x, train_y = rng.integers(0, 256, (120, 28, 28), dtype=np.uint8), rng.integers(0, 10, 120).astype(np.uint8)
    test_x, test_y = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), rng.integers(0, 10, 30).astype(np.uint8)
    write_idx(src / f"train-images-idx3-ubyte{ext}", train_x, compress)
    write_idx(src / f"train-labels-idx1-ubyte{ext}", train_y, compress)
    write_idx(src / f"t10k-images-idx3-ubyte{ext}", test_x, compress)
    write_idx(src / f"t10k-labels-idx1-ubyte{ext}", test_y, compress)
    m = prepare("idx", PrepareOptions(out=tmp_path / "out", source_dir=src, train_shards=2, val_fraction=0.25))
    assert (m.num_samples("train"), m.num_samples("val"), m.num_samples("test")) == (90, 30, 30)
    assert m.input_shape == (1, 28, 28) and m.input_dtype == "uint8"
    test_blocks = [b for info in m.splits["test"] for b in iter_blocks(m.root / info.file)]
    assert np.array_equal(np.concatenate([x for x, _ in test_blocks])[:, 0], test_x)
    assert np.array_equal(np.concatenate([y for _, y in test_blocks]), test_y)
    # a truncated images file is named
    data = (src / f"t10k-images-idx3-ubyte{ext}").read_bytes()
    raw = gzip.decompress(data) if compress else data
    truncated = raw[:-100]
    (src / f"t10k-images-idx3-ubyte{ext}").write_bytes(gzip.compress(truncated) if compress else truncated)
    with pytest.raises(DistTrainError, match="t10k-images-idx3-ubyte.*truncated or corrupt"):
        prepare("idx", PrepareOptions(out=tmp_path / "out2", source_dir=src, train_shards=2))


def test_every_missing_or_broken_idx_file_is_named_in_one_error(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / "src"
    src.mkdir()
    write_idx(src / "train-images-idx3-ubyte", rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), False)
    write_idx(src / "train-labels-idx1-ubyte", rng.integers(0, 10, 39).astype(np.uint8), False)  # one short
    write_idx(src / "t10k-images-idx3-ubyte", rng.integers(0, 256, (10, 8, 8), dtype=np.uint8), False)
    (src / "t10k-images-idx3-ubyte").write_bytes((src / "t10k-images-idx3-ubyte").read_bytes()[:-5])
    with pytest.raises(DistTrainError) as error:  # and no t10k labels at all
        prepare("idx", PrepareOptions(out=tmp_path / "out", source_dir=src, train_shards=2))
    assert str(error.value) == (
        f"3 problems with the IDX files in {src}: {src / 'train-images-idx3-ubyte'} ((40, 8, 8)) and "
        f"{src / 'train-labels-idx1-ubyte'} ((39,)) do not pair up as N images and N labels; "
        f"{src / 't10k-images-idx3-ubyte'}: header says shape (10, 8, 8) (640 bytes of data) but the file holds 635: "
        f"it is truncated or corrupt; no t10k-labels-idx1-ubyte[.gz] in {src}; expected the MNIST file names "
        "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...); replace or add those files and run the "
        "command again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written


# docs/data.md's promise for the built-in sets: shards and memory train on the same
# samples. digits stores its uint8 pixels and synthetic (1-d shape) its float32
# features exactly as the in-memory source holds them, and both paths normalize
# with one Normalizer from the same statistics, so the numbers are equal, not
# merely close.
BUILT_IN = {"digits": ({}, {}),
            "synthetic": ({"num_samples": 300, "input_shape": (12,), "num_classes": 5},
                          {"num_samples": 300, "num_features": 12, "num_classes": 5})}


def stored_split(manifest, split):
    blocks = [b for info in manifest.splits[split] for b in iter_blocks(manifest.root / info.file)]
    return np.concatenate([x for x, _ in blocks]), np.concatenate([y for _, y in blocks])


@pytest.mark.parametrize("source", list(BUILT_IN))
def test_prepared_built_in_sets_hold_the_in_memory_samples_normalized_alike(tmp_path, source):
    prepare_kw, memory_kw = BUILT_IN[source]
    prepare(source, PrepareOptions(out=tmp_path / source, split_seed=3, train_shards=4, block_size=50, **prepare_kw))
    for mode in ("per_channel", "per_feature", "none"):
        memory = build_splits(DataConfig(source=source, split_seed=3, normalize=mode, **memory_kw))
        shards = ShardData(DataConfig(source="shards", path=str(tmp_path / source), normalize=mode, loader_workers=0),
                           DistEnv(), 16, 1, seed=0)
        assert shards.input_shape == memory.input_shape and shards.num_classes == memory.num_classes
        x, y = stored_split(shards.manifest, "train")  # in file order: the split's order
        assert torch.equal(shards.normalize(torch.from_numpy(x)), memory.train.inputs), mode
        assert torch.equal(torch.from_numpy(y), memory.train.targets)
        for split in ("val", "test"):  # as evaluation reads them
            batches = list(shards.eval_batches(split, 64))
            assert torch.equal(torch.cat([b.inputs for b in batches]), getattr(memory, split).inputs), (split, mode)
            assert torch.equal(torch.cat([b.targets for b in batches]), getattr(memory, split).targets)


def test_prepared_synthetic_images_are_the_in_memory_samples_as_uint8(tmp_path):
    """With an image shape, prepare stores clip(40 x + 128) of the very samples
    the in-memory source draws for that many features."""
    m = prepare("synthetic", PrepareOptions(out=tmp_path / "s", num_samples=200, input_shape=(1, 4, 4), num_classes=3,
                                            train_shards=2))
    memory = build_splits(DataConfig(source="synthetic", num_samples=200, num_features=16, num_classes=3,
                                     normalize="none"))
    x, y = stored_split(m, "train")
    assert m.input_dtype == "uint8" and x.shape[1:] == (1, 4, 4)
    expected = np.clip(memory.train.inputs.numpy() * 40 + 128, 0, 255).astype(np.uint8)
    assert np.array_equal(x.reshape(len(x), -1), expected)
    assert np.array_equal(y, memory.train.targets.numpy())


def test_prepare_names_a_missing_source():
    with pytest.raises(DistTrainError, match="needs --source-dir"):
        prepare("idx", PrepareOptions(out="x"))
    with pytest.raises(DistTrainError, match="unknown data set 'cifar'"):
        prepare("cifar", PrepareOptions(out="x"))


# ----------------------------------------------------------------- stream

def test_shards_that_do_not_divide_among_readers_are_refused(tmp_path):
    from dist_train.config import load_config
    from dist_train.resolve import resolve
    from dist_train.start import plan_start

    indexed_dataset(tmp_path / "ds", shards=6)
    base = ["data.source=shards", f"data.path={tmp_path / 'ds'}", f"run.dir={tmp_path / 'run'}"]
    cfg = load_config(None, [*base, "data.loader_workers=2"])
    with pytest.raises(DistTrainError, match="6 shards, which does not divide among 2 rank.* x 2 loader worker"):
        plan_start(cfg, resolve(cfg, 2))
    cfg = load_config(None, [*base, "data.loader_workers=3"])
    assert plan_start(cfg, resolve(cfg, 2)).checkpoint is None  # 6 = 2 x 3 is fine


def test_normalization_uses_the_training_split_statistics(tmp_path):
    manifest = prepare("digits", PrepareOptions(out=tmp_path / "d"))
    norm = Normalizer(manifest.normalization, manifest.input_shape, "per_channel", "cpu")
    train = torch.cat([torch.from_numpy(x) for info in manifest.splits["train"] for x, _ in iter_blocks(manifest.root / info.file)])
    z = norm(train)
    assert abs(z.mean().item()) < 1e-5 and z.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------- bad input

BAD = {
    "truncated": "bytes, the manifest says",
    "corrupt": "does not match its SHA-256",
    "missing_field": "has no targets.npy field",
    "manifest_mismatch": "the manifest says 130 in",
    "missing_shard": "is missing",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_shards_are_named_before_training(tmp_path, kind):
    indexed_dataset(tmp_path / "ds")
    name = corrupt(kind, tmp_path / "ds")
    with pytest.raises(DistTrainError) as info:
        open_manifest(str(tmp_path / "ds"), Comm())
    assert name in str(info.value) and BAD[kind] in str(info.value)


def test_reading_a_corrupt_shard_without_verification_names_the_file(tmp_path):
    indexed_dataset(tmp_path / "ds")
    name = corrupt("corrupt", tmp_path / "ds")
    with pytest.raises(DistTrainError, match=f"shard {name} is corrupt or truncated"):
        list(iter_blocks(tmp_path / "ds" / "train-00001.tar"))


def test_missing_directory_and_manifest(tmp_path):
    with pytest.raises(DistTrainError, match="is not a directory; prepare a data set there with"):
        load_manifest(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistTrainError, match="has no manifest.json"):
        load_manifest(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{not json")
    with pytest.raises(DistTrainError, match="is not a valid manifest"):
        load_manifest(tmp_path / "empty")


@pytest.mark.parametrize("sizes", [[5, 3, 10, 1, 7], [64], [3, 3, 3], [0, 4, 0, 9]])
@pytest.mark.parametrize("batch", [1, 2, 4, 64])
def test_rebatching_keeps_every_sample_in_order(sizes, batch):
    from dist_train.data.stream import _rebatch

    chunks, count = [], 0
    for n in sizes:
        chunks.append((torch.arange(count, count + n), torch.arange(count, count + n)))
        count += n
    out = list(_rebatch(iter(chunks), batch))
    assert torch.cat([x for x, _ in out]).tolist() == list(range(count))
    assert all(len(x) == batch for x, _ in out[:-1]) and 0 < len(out[-1][0]) <= batch
