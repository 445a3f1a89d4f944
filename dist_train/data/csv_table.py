"""`dist-train prepare csv`: numeric feature columns and one target column of a
CSV file with a header line (read with Python's csv module: commas, quotes as
Excel writes them, UTF-8 with or without a byte-order mark; blank lines are
skipped).

The task (`--task auto`): a target column of numbers that are all whole is
classification (the number is the class index); of numbers not all whole,
regression; of values that are not numbers, classification whose class names
are the distinct values sorted (class index = position). A column that mixes
numbers with other values is refused under `auto`, since "NA" in a column of
prices is more likely a gap than a class: fix the cells or say --task.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dist_train.data.targets import Targets, check_task, class_indices, real_values
from dist_train.errors import MAX_NAMED, DistTrainError, name_some
from dist_train.tasks import Task


@dataclass(frozen=True)
class Table:
    inputs: np.ndarray  # float32 (N, features)
    targets: Targets
    source: dict


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _number(text: str) -> float | None:
    """The finite number a cell holds, else None ("", "NA", "nan", "inf", "abc")."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _columns_hint(header: list[str]) -> str:
    hint = f"the columns are: {', '.join(repr(h) for h in header)}"
    if len(header) == 1:
        for sep, name in ((";", "semicolons"), ("\t", "tabs")):
            if sep in header[0]:
                hint += f" (one column: the file seems to separate by {name}; only commas are read)"
    return hint




def read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (stripped names) and every data row with its line number.
    Blank lines are skipped; a row with another number of fields than the
    header (all of them, up to MAX_NAMED), a duplicated column name, a file
    that is not UTF-8 or not CSV: one DistTrainError naming the file and
    line."""
    path = Path(path)
    if not path.is_file():
        raise DistTrainError(f"CSV file {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DistTrainError(f"{path} is empty; expected a header line naming the columns, then one row "
                                     "per sample")
            header = [name.strip() for name in header]
            duplicate = next((h for i, h in enumerate(header) if h in header[:i]), None)
            if duplicate is not None:
                raise DistTrainError(f"{path}: the header names column {duplicate!r} twice; rename one")
            rows, ragged = [], []
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line
                if len(row) != len(header):
                    ragged.append(f"line {reader.line_num} has {len(row)} fields")
                rows.append((reader.line_num, row))
    except UnicodeDecodeError as exc:
        raise DistTrainError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise DistTrainError(f"{path} is not a well-formed CSV file ({exc})") from None
    if len(ragged) == 1:
        raise DistTrainError(f"{path} {ragged[0]}, the header has {len(header)}; every row needs one value per column")
    if ragged:
        raise DistTrainError(f"{path}: {len(ragged)} rows have another number of fields than the header's "
                             f"{len(header)}: {name_some(ragged)}; every row needs one value per column")
    if not rows:
        raise DistTrainError(f"{path} has a header but no rows of data")
    return header, rows


def numeric_columns(path: Path, header: list[str], rows: list[tuple[int, list[str]]], columns: list[str],
                    hint: str, hint_one: str | None = None) -> np.ndarray:
    """The cells of `columns` as float32 (N, len(columns)). Every cell that is
    not a finite number (or is beyond float32's range) is named, by line and
    column, in one error (up to MAX_NAMED of them, then a count); `hint` says
    what to do (`hint_one`, when only one cell is bad)."""
    at = [header.index(c) for c in columns]
    values = np.empty((len(rows), len(columns)), dtype=np.float64)
    bad: list[str] = []
    why = ""
    for i, (line, row) in enumerate(rows):
        for j, (column, k) in enumerate(zip(columns, at)):
            value = _number(row[k])
            if value is None or abs(value) > FLOAT32_MAX:
                bad.append(f"line {line}, column {column!r}: {row[k]!r}")
                why = "is not a (finite) number" if value is None else "is beyond float32's range"
                value = 0.0
            values[i, j] = value
    if len(bad) == 1:
        raise DistTrainError(f"{path} {bad[0]} {why}; {hint_one or hint}")
    if bad:
        raise DistTrainError(f"{path}: {len(bad)} cells are not (finite) numbers within float32's range: "
                             f"{name_some(bad)}; {hint}")
    return values.astype(np.float32)


def load_csv(path: Path, target: str | None, features: tuple[str, ...] | None, task: str) -> Table:
    check_task(task)
    path = Path(path)
    if not path.is_file():
        raise DistTrainError(f"--csv {path}: no such file")
    header, rows = read_rows(path)
    if target is None:
        raise DistTrainError(f"`prepare csv` needs --target COLUMN; {_columns_hint(header)}")
    chosen = list(features) if features is not None else [h for h in header if h != target]
    for column, option in [(target, "--target"), *((f, "--features") for f in chosen)]:
        if column not in header:
            raise DistTrainError(f"{option}: column {column!r} is not in {path}; {_columns_hint(header)}")
    if target in chosen:
        raise DistTrainError(f"--features names the target column {target!r}; a target cannot also be a feature")
    if len(set(chosen)) != len(chosen):
        raise DistTrainError(f"--features names a column twice: {', '.join(chosen)}")
    if not chosen:
        raise DistTrainError(f"{path} has no feature columns besides the target {target!r}")
    inputs = numeric_columns(path, header, rows, chosen, "fix the values, or leave those columns out of --features",
                             "fix the value, or leave the column out of --features")
    target_at = header.index(target)
    labels = [row[target_at].strip() for _, row in rows]
    lines = [line for line, _ in rows]
    empty = [str(line) for line, label in zip(lines, labels) if not label]
    if empty:
        raise DistTrainError(f"{path}: the target column {target!r} is empty on line{'s' if len(empty) > 1 else ''} "
                             f"{', '.join(empty[:MAX_NAMED])}{', ...' if len(empty) > MAX_NAMED else ''}; every "
                             "sample needs a target")
    where = f"{path} column {target!r}"
    source = {"source": "csv", "file": str(path), "target": target, "features": chosen}
    return Table(inputs, _targets(labels, lines, task, where), source)


def _targets(labels: list[str], lines: list[int], task: str, where: str) -> Targets:
    numbers = [_number(label) for label in labels]
    numeric = [n is not None for n in numbers]

    def at_line(i: int) -> str:  # errors name the line, not the sample index
        return f"line {lines[i]}"

    if task == "auto" and any(numeric) and not all(numeric):
        first_number, first_other = numeric.index(True), numeric.index(False)
        raise DistTrainError(f"{where} mixes numbers (line {lines[first_number]}: {labels[first_number]!r}) with "
                             f"other values (line {lines[first_other]}: {labels[first_other]!r}); fix those cells, "
                             "or pass --task classification to make every distinct value a class name")
    if task != "auto" and not Task(task).classifies:
        if not all(numeric):
            bad = numeric.index(False)
            raise DistTrainError(f"{where}, line {lines[bad]}: {labels[bad]!r} is not a (finite) number, as a "
                                 "regression target must be")
        return real_values(np.array(numbers, dtype=np.float64), where, at_line)
    if not all(numeric):  # class names: the distinct values, sorted
        names = tuple(sorted(set(labels)))
        position = {name: i for i, name in enumerate(names)}
        return class_indices(np.array([position[label] for label in labels], dtype=np.int64), where, names)
    values = np.array(numbers, dtype=np.float64)
    if task == "auto" and not np.all(values == np.round(values)):
        return real_values(values, where, at_line)
    return class_indices(values, where, sample=at_line)
