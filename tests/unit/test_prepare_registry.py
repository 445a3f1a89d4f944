"""The table of prepare sources (dist_train/data/prepare_sources.py) and what is
made from it: `dist-train prepare --help`, the refusal of an option given to a
source that does not read it, and the table of sources in the docs."""

import re
from pathlib import Path

import pytest

from dist_train.data.prepare_sources import (BEGIN, COMMON, END, SOURCES, describe, main as sources_main,
                                             markdown_table, source_options)
from launcher.cli import main
from tests.conftest import REPO
from tests.helpers import write_csv


def prepare_help(capsys, monkeypatch, columns=10_000):
    monkeypatch.setenv("COLUMNS", str(columns))  # wide: argparse wraps lines (and breaks words at hyphens)
    with pytest.raises(SystemExit) as stopped:
        main(["prepare", "--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


def help_entries(text):
    """Each flag's entry of the help ("--flag METAVAR" -> its help on one line),
    whether argparse put the help beside the flag or below it."""
    entries, flag = {}, None
    for line in text.splitlines():
        found = re.match(r"  (--[a-z-]+ \S+)(?:  +(.*))?$", line)
        if found:
            flag = found.group(1)
            entries[flag] = found.group(2) or ""
        elif flag and line.startswith(" " * 10) and line.strip():
            entries[flag] = f"{entries[flag]} {line.strip()}".strip()
        else:
            flag = None
    return entries


def test_help_lists_every_source_and_every_option(capsys, monkeypatch):
    text = prepare_help(capsys, monkeypatch)
    entries = help_entries(text)
    for source in SOURCES.values():
        assert re.search(rf"^  {re.escape(source.name)} +{re.escape(source.reads)}$", text, re.M), source.name
        for option in source.options:
            # the flag's entry says which sources read it and what it is to each
            assert f"{source.name}: {describe(option)}" in entries[f"{option.flag} {option.metavar}"], source.name
    for option in COMMON:
        assert entries[f"{option.flag} {option.metavar}"] == describe(option)
    assert len(entries) == len(COMMON) + len(source_options())
    assert f"the source to read: {' | '.join(SOURCES)}" in text
    # at the terminal's usual width every flag still shows, and every source starts its own line
    narrow = prepare_help(capsys, monkeypatch, columns=80)
    assert help_entries(narrow).keys() == entries.keys()
    for name in SOURCES:
        assert re.search(rf"^  {re.escape(name)} ", narrow, re.M)


def test_an_option_is_refused_for_every_source_that_does_not_read_it(tmp_path, capsys):
    options = source_options()
    refused = 0
    for name, source in SOURCES.items():
        own = {o.field for o in source.options}
        for field, option in options.items():
            if field in own:
                continue
            value = option.choices[0] if option.choices else "3"
            assert main(["prepare", name, "--out", str(tmp_path / "out"), option.flag, value]) == 2
            readers = " / ".join(s.name for s in SOURCES.values() if field in {o.field for o in s.options})
            assert capsys.readouterr().err == (f"dist-train: error: {option.flag} is for `prepare {readers}`, "
                                               f"not `prepare {name}`; drop it\n")
            refused += 1
    assert refused >= 60 and not (tmp_path / "out").exists()


def test_a_missing_required_option_is_named(tmp_path, capsys):
    """Every option the table calls required is refused by name when left out
    (the others given, with real files where the reader gets that far)."""
    write_csv(tmp_path / "d.csv", [["a", "y"], *([i, i % 2] for i in range(20))])
    (tmp_path / "src").mkdir()
    given = {"--source-dir": str(tmp_path / "src"), "--inputs": str(tmp_path / "x.npz"), "--image-size": "8",
             "--csv": str(tmp_path / "d.csv"), "--target": "y"}
    checked = 0
    for name, source in SOURCES.items():
        for missing in (o for o in source.options if o.required):
            others = [arg for o in source.options if o.required and o is not missing
                      for arg in (o.flag, given[o.flag])]
            assert main(["prepare", name, "--out", str(tmp_path / "out"), *others]) == 2
            err = capsys.readouterr().err
            assert err.startswith("dist-train: error: ") and f"needs {missing.flag}" in err, (name, err)
            checked += 1
    assert checked == 6 and not (tmp_path / "out").exists()


def test_a_bad_value_is_one_line_naming_the_flag(tmp_path, capsys):
    cases = [(["digits", "--shards", "two"], "--shards 'two' must be a whole number, e.g. 8"),
             (["digits", "--val-fraction", "a lot"], "--val-fraction 'a lot' must be a number, e.g. 0.15"),
             (["synthetic", "--input-shape", "1,x"], "--input-shape '1,x' must be integers separated by commas, "
                                                     "e.g. 1,28,28"),
             (["imagefolder", "--source-dir", str(tmp_path), "--image-size", "8x8"],
              "--image-size '8x8' must be integers separated by commas, e.g. 32 or 32,48")]
    for args, message in cases:
        assert main(["prepare", *args, "--out", str(tmp_path / "out")]) == 2
        assert capsys.readouterr().err == f"dist-train: error: {message}\n"


def test_every_default_parses_and_the_command_line_uses_it(tmp_path, capsys):
    for option in (*COMMON, *source_options().values()):
        if option.default is not None:
            option.default_value()
    assert main(["prepare", "synthetic", "--out", str(tmp_path / "s"), "--num-classes", "3"]) == 0
    assert "train 2868 samples in 8 shards" in capsys.readouterr().out  # --num-samples 4096, fractions 0.15


def docs_texts():
    docs = sorted((Path(REPO) / "docs").glob("*.md")) if (Path(REPO) / "docs").is_dir() else []
    return {path: path.read_text() for path in [Path(REPO) / "README.md", *docs]}


def test_the_table_of_sources_in_the_docs_is_the_generated_one():
    table = markdown_table()
    holders = [path for path, text in docs_texts().items() if f"{BEGIN}\n{table}{END}" in text]
    assert holders, ("the table of prepare sources in README.md / docs/*.md is out of date: run "
                     "`python -m dist_train.data.prepare_sources --update FILE.md` on the file holding it")
    for source in SOURCES.values():
        assert f"| `{source.name}` |" in table
        for option in source.options:
            assert f"`{option.flag} {option.metavar.replace('|', chr(92) + '|')}`" in table


def test_update_rewrites_only_the_table_between_the_markers(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text(f"# Data\n\nbefore\n{BEGIN}\n| stale |\n{END}\nafter\n")
    assert sources_main(["--update", str(page)]) == 0
    assert page.read_text() == f"# Data\n\nbefore\n{BEGIN}\n{markdown_table()}{END}\nafter\n"
    assert sources_main(["--markdown"]) == 0
    assert capsys.readouterr().out.endswith(markdown_table())
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(Exception, match="markers"):
        sources_main(["--update", str(tmp_path / "bare.md")])
    assert (tmp_path / "bare.md").read_text() == "no markers\n"


def test_the_table_escapes_what_markdown_would_eat():
    table = markdown_table()
    assert "`ROOT/<class name>/<image>`" in table  # a code span keeps its brackets
    assert r"`--color grey\|rgb`" in table  # a pipe inside a cell would end it
    assert table.count("<br>") == sum(max(len(s.options) - 1, 0) for s in SOURCES.values())  # one line per option
    assert "<image>`" in table and "<image>" not in table.replace("`ROOT/<class name>/<image>`", "")
    rows = table.splitlines()
    assert len(rows) == 2 + len(SOURCES)
    assert all(len(re.split(r"(?<!\\)\|", row)) == 5 for row in rows)  # three cells each, no stray pipe
