"""`dist-train prepare`: its parser and its command, made from the table of
sources (dist_train/data/prepare_sources.py): NAME's choices, every source's
flags with their help and defaults, and the list of sources under the options.
Nothing here names a source."""

from __future__ import annotations

import argparse
import shutil
import textwrap

from dist_train.data.prepare_sources import COMMON, SOURCES, describe, source_options
from dist_train.errors import DistTrainError

DESCRIPTION = ("Write NAME as webdataset shards (blocks of samples per tar member) plus manifest.json (sample counts, "
               "shapes, classes, training-split normalization statistics, SHA-256 of every shard). Deterministic; "
               "safe to re-run (written aside, then renamed into place); nothing is written when the source has a "
               "problem. Every source takes the options below its NAME; the source options are each for the "
               "sources they name.")


def _width() -> int:
    return max(shutil.get_terminal_size().columns - 2, 40)  # as argparse's own help formatter


def _fill(text: str, indent: str = "", first: str = "") -> str:
    return textwrap.fill(text, _width(), initial_indent=first or indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False)


def _items(items: list[str], indent: str) -> list[str]:
    """Lines of `items` separated by spaces, never breaking inside one."""
    lines = [indent]
    for item in items:
        if lines[-1].strip() and len(lines[-1]) + 1 + len(item) > _width():
            lines.append(indent + "  ")
        lines[-1] += ("" if not lines[-1].strip() else " ") + item
    return lines


def _sources_epilog() -> str:
    lines = ["sources (NAME):"]
    pad = max(len(name) for name in SOURCES) + 4
    for source in SOURCES.values():
        lines.append(_fill(source.reads, " " * pad, f"  {source.name:<{pad - 2}}"))
        flags = [f"{o.flag} {o.metavar}" + (" (required)" if o.required else "") for o in source.options]
        lines += _items(["options:", *(f"{f}," for f in flags[:-1]), *flags[-1:]] if flags else ["options: none"],
                        " " * pad)
    return "\n".join(lines)


def _source_help(field: str) -> str:
    """One flag's help for every source that reads it: "idx: ...; imagefolder: ..."
    (sources that describe it alike share one entry)."""
    by_text: dict[str, list[str]] = {}
    for source in SOURCES.values():
        for option in source.options:
            if option.field == field:
                by_text.setdefault(describe(option), []).append(source.name)
    return "; ".join(f"{', '.join(names)}: {text}" for text, names in by_text.items())


def add_prepare_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("prepare", help="write a data set as train/validation/test shards with a manifest",
                            description=_fill(DESCRIPTION), epilog=_sources_epilog(),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", metavar="NAME", choices=list(SOURCES),
                        help=f"the source to read: {' | '.join(SOURCES)} (listed below)")
    for option in COMMON:  # as text: parsed in run_prepare, so a bad value is one line naming the flag
        parser.add_argument(option.flag, dest=option.field, metavar=option.metavar, required=option.required,
                            default=None, help=describe(option).replace("%", "%%"))
    group = parser.add_argument_group("source options")
    for field, option in source_options().items():
        group.add_argument(option.flag, dest=field, metavar=option.metavar, choices=option.choices, default=None,
                           help=_source_help(field).replace("%", "%%"))
    return parser


def run_prepare(args: argparse.Namespace) -> int:
    from dist_train.data.prepare import PrepareOptions, prepare

    given = {}
    for option in (*COMMON, *source_options().values()):
        text = getattr(args, option.field)
        if text is not None:  # not given: the default of PrepareOptions or of the source
            try:
                given[option.field] = option.parse(text)
            except ValueError as exc:
                raise DistTrainError(f"{option.flag} {text!r} {exc}") from None
    manifest = prepare(args.name, PrepareOptions(**given))
    counts = ", ".join(f"{split} {manifest.num_samples(split)} samples in {len(shards)} shards"
                       for split, shards in manifest.splits.items())
    task = (f"{manifest.num_classes} classes" if manifest.task.classifies
            else f"regression, targets {manifest.target_shape}")
    print(f"prepared {args.name} in {manifest.root}: {counts}; inputs {manifest.input_shape} "
          f"{manifest.input_dtype}, {task}")
    return 0
