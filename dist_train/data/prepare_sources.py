"""The data sources of `dist-train prepare`, in one table (SOURCES): each
source's name, what it reads, its options and the function that reads it.

Everything else is made from this table: prepare.py's PrepareOptions and its
refusal of an option given to a source that does not read it,
`dist-train prepare`'s NAME and flags (launcher/prepare_command.py), and the
table of sources in docs/data.md. A new source is one entry here.

    python -m dist_train.data.prepare_sources --markdown       # print the table
    python -m dist_train.data.prepare_sources --update docs/data.md  # rewrite it between the markers
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dist_train.data.targets import TASKS, Targets
from dist_train.errors import DistTrainError
from dist_train.tasks import CLASSIFICATION


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be a whole number, e.g. 8") from None


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("must be a number, e.g. 0.15") from None


def integers(example: str) -> Callable[[str], tuple[int, ...]]:
    """Parse "1,28,28" as (1, 28, 28)."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"must be integers separated by commas, e.g. {example}") from None

    return parse


def image_size(text: str) -> tuple[int, ...]:
    """H or H,W; H alone is a square."""
    size = integers("32 or 32,48")(text)
    return size * 2 if len(size) == 1 else size


def names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(","))


@dataclass(frozen=True)
class Option:
    """One command-line option: `--flag METAVAR` sets PrepareOptions.`field`."""

    field: str
    flag: str
    metavar: str
    help: str  # what it is, one phrase (its default is added from `default`)
    parse: Callable[[str], Any] = str  # command-line text -> value; a ValueError says what is wrong
    default: str | None = None  # the text used when the option is not given (None: no default)
    required: bool = False  # shown in the help and the table; the reader refuses its absence
    choices: tuple[str, ...] | None = None

    def default_value(self) -> Any:
        return None if self.default is None else self.parse(self.default)


@dataclass(frozen=True)
class Read:
    """What a source read: every sample, for prepare to split."""

    inputs: np.ndarray  # (N, ...) as stored: uint8 pixels stay uint8
    targets: Targets
    source: dict  # the manifest's record of where the samples came from
    test: tuple[np.ndarray, np.ndarray] | None = None  # a test split the source ships; only validation is cut off


@dataclass(frozen=True)
class Source:
    name: str
    reads: str  # one line: what it reads
    options: tuple[Option, ...]
    read: Callable[[Any], Read]  # PrepareOptions, this source's unset options at their defaults -> Read
    own_test_split: bool = False  # the source ships its test split: --test-fraction does not apply


#: what every source takes (the split and the shards)
COMMON = (
    Option("out", "--out", "DIR", "the directory to write, e.g. data/prepared/digits", Path, required=True),
    Option("train_shards", "--shards", "N", "training shards; a multiple of ranks x loader workers", whole_number,
           "8"),
    Option("eval_shards", "--eval-shards", "N", "validation and test shards each", whole_number, "2"),
    Option("block_size", "--block-size", "N", "samples per tar member", whole_number, "256"),
    Option("val_fraction", "--val-fraction", "F", "the validation share, of the training file for IDX sets",
           number, "0.15"),
    Option("test_fraction", "--test-fraction", "F", "the test share, of sources without a test split of their own",
           number, "0.15"),
    Option("split_seed", "--split-seed", "N", "the seed of the train/validation/test split", whole_number, "0"),
)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = "train- and t10k-images-idx3-ubyte and -labels-idx1-ubyte, gzip or not"


def task_option(auto: str) -> Option:
    """--task of a file source; `auto` says what auto makes of its targets."""
    return Option("task", "--task", "|".join(TASKS), f"what the targets are: auto ({auto}), classification or "
                  "regression", default="auto", choices=TASKS)


def _read_digits(opts: Any) -> Read:
    from dist_train.data.builtin import digits

    raw = digits()  # uint8 pixels 0..16, stored as they are
    return Read(raw.inputs, Targets(raw.targets, CLASSIFICATION, raw.num_classes),
                {"source": "sklearn.datasets.load_digits"})


def _read_synthetic(opts: Any) -> Read:
    from dist_train.data.builtin import synthetic

    raw = synthetic(opts.num_samples, opts.input_shape, opts.num_classes, opts.split_seed)
    inputs = raw.inputs
    if len(opts.input_shape) >= 2:  # stored as class-dependent uint8 images, as image data sets are
        inputs = np.clip(inputs * 40 + 128, 0, 255).astype(np.uint8)
    return Read(inputs, Targets(raw.targets, CLASSIFICATION, raw.num_classes),
                {"source": "synthetic", "seed": opts.split_seed})


def _read_idx(opts: Any) -> Read:
    from dist_train.data.idx import load_idx_splits

    if opts.source_dir is None:
        raise DistTrainError("`prepare idx` needs --source-dir DIR holding the MNIST-format files")
    directory = Path(opts.source_dir)
    if not directory.is_dir():
        hint = " (install it with `apt-get install dataset-fashion-mnist`)" if str(directory) == FASHION_MNIST_DIR \
            else ""
        raise DistTrainError(f"source directory {directory} does not exist{hint}")
    splits = load_idx_splits(directory)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["t10k"]
    classes = int(max(y_train.max(), y_test.max())) + 1
    return Read(x_train[:, None], Targets(y_train, CLASSIFICATION, classes),
                {"source": "idx", "directory": str(directory)}, test=(x_test[:, None], y_test))


def _read_arrays(opts: Any) -> Read:
    from dist_train.data.numpy_files import load_arrays

    if opts.inputs is None:
        raise DistTrainError("`prepare arrays` needs --inputs FILE (.npy with --targets FILE, or one .npz "
                             "holding both)")
    arrays = load_arrays(opts.inputs, opts.targets, opts.inputs_key, opts.targets_key, opts.task)
    return Read(arrays.inputs, arrays.targets, arrays.source)


def _read_image_folder(opts: Any) -> Read:
    from dist_train.data.image_folder import load_image_folder

    if opts.source_dir is None:
        raise DistTrainError("`prepare imagefolder` needs --source-dir ROOT, the folder holding "
                             "ROOT/<class name>/<image> (PNG or JPEG)")
    folder = load_image_folder(opts.source_dir, opts.image_size, opts.color)
    targets = Targets(folder.targets, CLASSIFICATION, len(folder.class_names), folder.class_names)
    return Read(folder.inputs, targets, folder.source)


def _read_csv(opts: Any) -> Read:
    from dist_train.data.csv_table import load_csv

    if opts.csv is None:
        raise DistTrainError("`prepare csv` needs --csv FILE (a header line, then one row per sample) and "
                             "--target COLUMN")
    table = load_csv(opts.csv, opts.target, opts.features, opts.task)
    return Read(table.inputs, table.targets, table.source)


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("digits", "scikit-learn's handwritten digits: 1,797 8x8 grey images (pixels 0..16) of 10 classes", (),
           _read_digits),
    Source("idx", f"MNIST-format IDX files in a directory ({IDX_FILES}); the t10k files are the test split",
           (Option("source_dir", "--source-dir", "DIR", "the directory holding the IDX files", Path,
                   required=True),),
           _read_idx, own_test_split=True),
    Source("fashion-mnist", "Fashion-MNIST's IDX files as Debian installs them (`apt-get install "
           "dataset-fashion-mnist`): 70,000 28x28 grey images of 10 classes",
           (Option("source_dir", "--source-dir", "DIR", "the directory holding the IDX files", Path,
                   FASHION_MNIST_DIR),),
           _read_idx, own_test_split=True),
    Source("synthetic", "class-dependent random samples seeded by --split-seed (those `data.source: synthetic` "
           "draws): uint8 images (C,H,W) or float32 features (F)",
           (Option("num_samples", "--num-samples", "N", "samples", whole_number, "4096"),
            Option("input_shape", "--input-shape", "C,H,W|F", "C,H,W for uint8 images, F for float32 features",
                   integers("1,28,28"), "1,28,28"),
            Option("num_classes", "--num-classes", "N", "classes", whole_number, "10")),
           _read_synthetic),
    Source("arrays", "NumPy .npy/.npz files: inputs (N, ...) and targets (N,) or (N, K); never unpickled",
           (Option("inputs", "--inputs", "FILE", "the inputs .npy (N, ...), or one .npz holding inputs and targets",
                   Path, required=True),
            Option("targets", "--targets", "FILE", "the targets .npy/.npz (default: from the --inputs .npz)", Path),
            Option("inputs_key", "--inputs-key", "KEY", "the inputs' name in an .npz (default: x, X or inputs)"),
            Option("targets_key", "--targets-key", "KEY",
                   "the targets' name in an .npz (default: y, Y, targets or labels)"),
            task_option("an integer array: class indices; other numbers: regression")),
           _read_arrays),
    Source("imagefolder", "a tree of PNG and JPEG images, `ROOT/<class name>/<image>`: the folder names, sorted, "
           "are the classes; every image is resized to one size",
           (Option("source_dir", "--source-dir", "DIR", "ROOT, holding one folder of images per class", Path,
                   required=True),
            Option("image_size", "--image-size", "H[,W]", "every image is resized to H x W (bilinear)", image_size,
                   required=True),
            Option("color", "--color", "grey|rgb", "1 (grey) or 3 (rgb) channels", default="rgb",
                   choices=("grey", "rgb"))),
           _read_image_folder),
    Source("csv", "a CSV table with a header line: numeric feature columns and one target column (class names, "
           "class indices or real values)",
           (Option("csv", "--csv", "FILE", "the CSV file: a header line, then one row per sample", Path,
                   required=True),
            Option("target", "--target", "COLUMN", "the target column", required=True),
            Option("features", "--features", "A,B,...", "the feature columns, in this order (default: all but "
                   "--target)", names),
            task_option("whole numbers: class indices; other numbers: regression; text: class names")),
           _read_csv),
)}


def source_options() -> dict[str, Option]:
    """Every source option by field, once. Sources that share a field share its
    flag, metavar, parse and choices (only the help and the default may differ)."""
    fields: dict[str, Option] = {}
    for source in SOURCES.values():
        for option in source.options:
            seen = fields.setdefault(option.field, option)
            if (seen.flag, seen.metavar, seen.parse, seen.choices) != (option.flag, option.metavar, option.parse,
                                                                     option.choices):
                raise AssertionError(f"{source.name}: option {option.field} differs from another source's")
    return fields


def readers_of(field: str) -> tuple[str, ...]:
    return tuple(s.name for s in SOURCES.values() if any(o.field == field for o in s.options))


def describe(option: Option) -> str:
    """The option's help with whether it is needed, or its default."""
    if option.required:
        return f"{option.help} (required)"
    return f"{option.help} (default {option.default})" if option.default is not None else option.help


# ----------------------------------------------------------------- the table in docs/data.md

BEGIN, END = "<!-- prepare-sources:begin -->", "<!-- prepare-sources:end -->"


def _cell(text: str) -> str:
    """Text for a markdown table cell: `|` escaped; outside code spans, < and >
    too (else `<image>` would be read as an HTML tag)."""
    parts = text.replace("|", r"\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def markdown_table() -> str:
    rows = ["| NAME | reads | options |", "|---|---|---|"]
    for source in SOURCES.values():
        options = "<br>".join(_cell(f"`{o.flag} {o.metavar}`: {describe(o)}") for o in source.options)
        rows.append(f"| `{source.name}` | {_cell(source.reads)} | {options or 'none'} |")
    return "\n".join(rows) + "\n"


def update_markdown(text: str) -> str:
    """`text` with the table between the markers replaced by today's."""
    pattern = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise DistTrainError(f"no {BEGIN} ... {END} markers to put the table between")
    return pattern.sub(lambda _: f"{BEGIN}\n{markdown_table()}{END}", text, count=1)


def main(argv: list[str]) -> int:
    if argv == ["--markdown"]:
        sys.stdout.write(markdown_table())
        return 0
    if len(argv) >= 2 and argv[0] == "--update":
        for name in argv[1:]:
            path = Path(name)
            path.write_text(update_markdown(path.read_text()))
            print(f"updated the table of prepare sources in {path}")
        return 0
    print("usage: python -m dist_train.data.prepare_sources --markdown | --update FILE.md ...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
