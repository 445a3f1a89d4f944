"""Map-style datasets a user might write: item i's class is i % classes (or
a real target for a regression); with `tag_index`, its first input value is
i, so tests can see which samples a rank got."""

import torch
from torch.utils.data import Dataset


class Indexed(Dataset):
    def __init__(self, n: int, start: int, features: int, classes: int, regression: bool, batched: bool,
                 tag_index: bool = False):
        centers = torch.randn(classes, features, generator=torch.Generator().manual_seed(12345))  # every split's
        g = torch.Generator().manual_seed(start)
        self.index = torch.arange(start, start + n, dtype=torch.float32)
        self.targets = torch.arange(start, start + n) % classes
        self.inputs = centers[self.targets] + 0.5 * torch.randn(n, features, generator=g)
        if tag_index:
            self.inputs[:, 0] = self.index
        if regression:
            weights = torch.linspace(-1, 1, features - 1)
            self.targets = self.inputs[:, 1:] @ weights + 0.1 * torch.randn(n, generator=g)
        self.num_classes = classes
        self.batched = batched
        self.getitems_calls = 0

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return self.inputs[i], self.targets[i]

    def __getattr__(self, name):
        # __getitems__ only when asked for: DataLoader uses it when it exists
        if name == "__getitems__" and self.__dict__.get("batched"):
            return self._getitems
        raise AttributeError(name)

    def _getitems(self, indices):
        self.getitems_calls += 1
        idx = torch.tensor(indices)
        return list(zip(self.inputs[idx], self.targets[idx]))


def make_splits(n_train: int = 203, n_val: int = 41, n_test: int = 37, features: int = 6, classes: int = 3,
                regression: bool = False, batched: bool = True, tag_index: bool = False):
    def make(n, start):
        return Indexed(n, start, features, classes, regression, batched, tag_index)
    return make(n_train, 0), make(n_val, 100_000), make(n_test, 200_000)


def not_three():
    return [Indexed(10, 0, 4, 2, False, False)]


def raising(n: int = 10):
    raise ValueError(f"cannot read {n} samples from /nowhere")


def bad_items():
    class Items(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"x": torch.zeros(3), "y": 1}
    return Items(), Items(), Items()


def failing_item(bad: int = 5, split: str = "train"):
    """Items that read fine but one: `bad` of `split` raises (a file that is not there)."""
    class Items(Dataset):
        num_classes = 2  # no pass over the targets at start: the bad item is met by the loader

        def __init__(self, name):
            self.name = name

        def __len__(self):
            return 12

        def __getitem__(self, i):
            if self.name == split and i == bad:
                raise FileNotFoundError(f"sample-{i}.png")
            return torch.full((3,), float(i)), i % 2
    return Items("train"), Items("val"), Items("test")


def ragged_item(bad: int = 7):
    """Item `bad` of the training split has 4 features, the others 3."""
    class Items(Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return torch.zeros(4 if i == bad else 3), i % 2
    return Items(), Items(), Items()
