"""The key reference in docs/config.md, kept true to the typed config (dist_train/config.py).

The reference is the part of docs/config.md between the two markers below: a
table per section, a row per key with its type, its default and what a resumed
run does with a changed value (refused, applied or ignored, from the field's
metadata), all rendered from the schema, and its meaning, written by hand in
the page. `python -m dist_train.config_docs` rewrites that part from the
schema and keeps every meaning written there: a new key's row starts with the
comment on its field in config.py, a key that is gone loses its row.
`--check` only says whether the page is up to date; tests/unit/test_docs.py
makes the same comparison.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import sys
import tokenize
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from dist_train.config import Config, default_value, resume_rule

BEGIN = "<!-- config-reference:begin: generated from dist_train/config.py by `python -m dist_train.config_docs`; edit the meanings only -->"
END = "<!-- config-reference:end -->"
HEADER = "| key | type | default | on resume | meaning |"
RULE_WORDS = {"refused": "refused", "applied": "applied", "ignored": "ignored (no effect)"}
PAGE = Path(__file__).resolve().parents[1] / "docs" / "config.md"


@dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: str
    rule: str
    meaning: str = ""

    def line(self) -> str:
        return "| " + " | ".join(_cell(c) for c in (f"`{self.key}`", self.type, self.default, self.rule,
                                                     self.meaning)) + " |"


def sections() -> list[tuple[str, type]]:
    """(name, dataclass) of every config section, in the schema's order."""
    return [(f.name, f.default_factory) for f in dataclasses.fields(Config)]


def schema_rows() -> list[Row]:
    """One row per key of every section, as the schema says (no meanings)."""
    rows = []
    for section, cls in sections():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            kind, why = resume_rule(key)
            rule = RULE_WORDS[kind] + (f": {why}" if why else "")
            rows.append(Row(key, type_text(hints[f.name]), default_text(default_value(key)), rule))
    return rows


def type_text(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is typing.Union or (origin is not None and type(None) in args):
        inner = [a for a in args if a is not type(None)]
        return f"{type_text(inner[0])} or `null`"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_text(args[0])}"
        return "list: " + ", ".join(type_text(a) for a in args)
    names = {bool: "bool", int: "int", float: "float", str: "string", dict: "mapping"}
    if hint in names:
        return names[hint]
    raise TypeError(f"no words for the config type {hint!r}")  # internal: a new kind of field


def default_text(value: Any) -> str:
    """The default as one would write it in YAML."""
    if value == "":
        return '`""`'
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return f"`{text.removesuffix('...').strip()}`"


def field_comments(cls: type) -> dict[str, str]:
    """The comment on each field of a section in config.py: the comment lines
    just above it and the comment at the end of its line(s)."""
    lines, _ = inspect.getsourcelines(cls)
    source = "".join(lines)
    on_line = {tok.start[0]: tok.string.lstrip("#").strip()
               for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    comments = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, i = [], node.lineno - 1
        while i - 1 >= 0 and lines[i - 1].strip().startswith("#"):
            above.insert(0, on_line[i])
            i -= 1
        trailing = [on_line[n] for n in range(node.lineno, node.end_lineno + 1) if n in on_line]
        comments[node.target.id] = " ".join(above + trailing)
    return comments


def parse_reference(page: str) -> dict[str, Row]:
    """The rows between the markers of a page, by key."""
    region = _region(page)
    rows = {}
    for line in region.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) != 5:
            raise ValueError(f"docs/config.md: a row of the reference needs 5 cells: {line}")
        key = cells[0].strip("`")
        rows[key] = Row(key, *cells[1:])
    return rows


def render_reference(meanings: dict[str, str]) -> str:
    """The reference (markers included): every key of the schema with the
    meaning given, or else its field's comment in config.py."""
    comments = {f"{section}.{name}": text for section, cls in sections()
                for name, text in field_comments(cls).items()}
    out = [BEGIN]
    section = None
    for row in schema_rows():
        name = row.key.split(".")[0]
        if name != section:
            section = name
            out += ["", f"### {name}", "", HEADER, "|---|---|---|---|---|"]
        meaning = meanings.get(row.key) or comments.get(row.key) or ""
        out.append(dataclasses.replace(row, meaning=meaning).line())
    out += ["", END]
    return "\n".join(out)


def updated(page: str) -> str:
    """The page with its reference rendered again from the schema, meanings kept."""
    meanings = {key: row.meaning for key, row in parse_reference(page).items()}
    start, stop = page.index(BEGIN), page.index(END) + len(END)
    return page[:start] + render_reference(meanings) + page[stop:]


def _region(page: str) -> str:
    if BEGIN not in page or END not in page:
        raise ValueError(f"docs/config.md has lost its markers: {BEGIN} ... {END}")
    return page[page.index(BEGIN) + len(BEGIN):page.index(END)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_train.config_docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("page", nargs="?", default=str(PAGE), help="the page (default: docs/config.md)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is not what the schema gives")
    args = parser.parse_args(argv)
    path = Path(args.page)
    page = path.read_text()
    new = updated(page)
    old_keys, new_keys = set(parse_reference(page)), set(parse_reference(new))
    if args.check:
        if new != page:
            print(f"{path} is out of date with dist_train/config.py (added: {sorted(new_keys - old_keys)}, "
                  f"removed: {sorted(old_keys - new_keys)}); run `python -m dist_train.config_docs`", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    print(f"wrote {path}: {len(new_keys)} keys; added {sorted(new_keys - old_keys)}, "
          f"removed {sorted(old_keys - new_keys)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
