"""A custom dataset's normalization statistics (and largest class index) come
from one pass over the training split that the ranks share (real gloo
workers): each item is read once per job, and the statistics are the same
bits on 1, 2 and 3 workers and the same as the single-process pass of
before (issue 25)."""

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from dist_train.comm import Comm
from dist_train.data.custom import scan_training_split
from dist_train.data.normalization import streamed_stats
from dist_train.errors import ConfigError
from tests.multiproc import run_workers

N = 103  # chunks of 8: 13 chunks, the last of 7, so rounds end unevenly on 2 and 3 workers


class Decoded(Dataset):
    """Items decoded from bytes, as a user's dataset of files might: flat
    features of scales of their own, or uint8 images; counts its reads."""

    def __init__(self, images: bool, bad_item: int | None = None, negative_item: int | None = None):
        rng = np.random.default_rng(7)
        if images:
            self.raw = [rng.integers(0, 256, (3, 5, 4), dtype=np.uint8).tobytes() for _ in range(N)]
            self.shape, self.dtype = (3, 5, 4), np.uint8
        else:
            scales = np.array([50.0, 0.01, -300.0, 1e4], dtype=np.float32)
            self.raw = [(scales + scales * rng.normal(size=4).astype(np.float32)).tobytes() for _ in range(N)]
            self.shape, self.dtype = (4,), np.float32
        self.bad_item, self.negative_item = bad_item, negative_item
        self.reads = 0

    def __len__(self):
        return N

    def __getitem__(self, i):
        self.reads += 1
        if i == self.bad_item:
            raise OSError(f"item {i}: cannot decode /data/{i}.bin")
        x = torch.from_numpy(np.frombuffer(self.raw[i], dtype=self.dtype).reshape(self.shape).copy())
        return x, torch.tensor(-1 if i == self.negative_item else i % 5)


def scan(env, images, workers, comm=None):
    data = Decoded(images)
    found = scan_training_split(data, data.shape, comm or Comm.of(env), workers, stats=True, largest_target=True,
                                chunk=8)
    return {"stats": found.stats, "largest": found.largest_target, "reads": data.reads}


@pytest.mark.parametrize("images", [False, True])
def test_statistics_are_the_same_bits_on_any_number_of_workers_and_each_item_is_read_once(images):
    data = Decoded(images)
    inputs = np.stack([np.frombuffer(raw, dtype=data.dtype).reshape(data.shape) for raw in data.raw])
    before = streamed_stats((inputs[lo:lo + 8] for lo in range(0, N, 8)), data.shape)  # the pass every rank made
    alone = scan(None, images, 0, comm=Comm())
    assert alone["stats"] == before and alone["largest"] == 4 and alone["reads"] == N
    for world_size, workers in ((2, 1), (3, 0)):
        ranks = run_workers(scan, world_size, images, workers, timeout_s=120)
        assert [r["stats"] for r in ranks] == [before] * world_size, world_size  # == on float lists: bit for bit
        assert [r["largest"] for r in ranks] == [4] * world_size
        if workers == 0:  # read here, not in reader processes: the counts are this process's
            assert sum(r["reads"] for r in ranks) == N  # once per job, not once per rank


def scan_broken(env, bad_item, negative_item):
    data = Decoded(False, bad_item, negative_item)
    try:
        scan_training_split(data, data.shape, Comm.of(env), 0, stats=True, largest_target=True, chunk=8)
    except Exception as exc:  # noqa: BLE001 - what each rank raised is the result
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def test_a_bad_item_on_one_rank_stops_every_rank_with_its_message_instead_of_a_hang():
    # item 90 is in chunk 11: rank 1's of 2; rank 0 would wait in the all-reduce without the shared decision
    r0, r1 = run_workers(scan_broken, 2, 90, None, timeout_s=120, pg_timeout_s=30)
    assert "cannot decode /data/90.bin" in r1 and r0.startswith("SharedError") and "cannot decode /data/90.bin" in r0
    r0, r1 = run_workers(scan_broken, 2, None, 50, timeout_s=120, pg_timeout_s=30)
    assert r0 == r1 and "a class target is negative" in r0
