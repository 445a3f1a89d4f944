"""Seeds and random-number streams, in one place.

The weights start from `train.seed` on every rank (DDP also broadcasts rank
0's); after that each rank draws from a stream of its own (dropout masks must
differ across ranks). A checkpoint keeps each rank's streams (torch, numpy,
Python, CUDA) as tensors and plain numbers, so they load with
`weights_only=True`; a resumed rank puts them back just before its first step.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def rank_seed(seed: int, rank: int) -> int:
    """A distinct, reproducible seed per rank."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain numbers (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": {"version": version, "state": list(py_state), "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RankStreams:
    """This rank's random streams as a checkpoint part. A loaded state is held
    back and put in place by `resume()`, just before the first resumed step:
    building the data and the model in between draws numbers too."""

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = state

    def reseed(self, seed: int, rank: int) -> None:
        """No state to put back (another number of workers): a fresh stream of this rank's own."""
        self.pending = None
        seed_everything(rank_seed(seed, rank))

    def resume(self) -> None:
        if self.pending is not None:
            set_rng_state(self.pending)
            self.pending = None
