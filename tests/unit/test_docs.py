"""The docs stay true: docs/config.md's key reference against the typed config
(every key, its type, default and resume rule, and a meaning for each); every
relative link of the README and docs/ against the files and headings it points
at; docs/cli.md against the CLI parser; the README's test command against
.ci/run; the README's and docs/development.md's maps against the repository."""

import argparse
import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from dist_train import config_docs
from dist_train.config import DataConfig
from launcher.cli import build_parser
from tests.conftest import REPO

DOCS = Path(REPO) / "docs"
README = Path(REPO) / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md")), Path(REPO) / "examples" / "README.md", Path(REPO) / "data" / "README.md"]


def reference() -> dict:
    return config_docs.parse_reference((DOCS / "config.md").read_text())


# ----------------------------------------------------------------- docs/config.md

def test_config_reference_documents_every_key_of_the_schema_and_no_other():
    documented = set(reference())
    schema = {row.key for row in config_docs.schema_rows()}
    assert sorted(schema - documented) == [], "keys missing from docs/config.md: run `python -m dist_train.config_docs`"
    assert sorted(documented - schema) == [], "docs/config.md documents keys the schema no longer has"


def test_config_reference_types_defaults_and_resume_rules_are_the_schemas():
    documented = reference()
    wrong = [(row.key, column, getattr(documented[row.key], column), getattr(row, column))
             for row in config_docs.schema_rows() if row.key in documented
             for column in ("type", "default", "rule") if getattr(documented[row.key], column) != getattr(row, column)]
    assert wrong == [], "docs/config.md (key, column, documented, schema): run `python -m dist_train.config_docs`"


def test_every_config_key_has_a_meaning():
    assert [key for key, row in reference().items() if not row.meaning.strip()] == []


def test_config_reference_is_what_the_generator_writes():
    page = (DOCS / "config.md").read_text()
    assert config_docs.updated(page) == page, "run `python -m dist_train.config_docs`"


def test_the_generator_keeps_meanings_adds_new_keys_and_drops_gone_ones():
    page = (DOCS / "config.md").read_text()
    rows = reference()
    workers, epochs, run_dir = rows["data.loader_workers"], rows["train.epochs"], rows["run.dir"]
    stale = page.replace(workers.line() + "\n", "")  # a new key, not documented yet
    stale = stale.replace(epochs.line(), dataclasses.replace(epochs, default="`99`", rule="refused").line())
    stale = stale.replace(run_dir.line(), run_dir.line() + "\n| `run.gone` | int | `1` | applied | gone |")
    assert "data.loader_workers" not in config_docs.parse_reference(stale)
    fixed = config_docs.parse_reference(config_docs.updated(stale))
    assert "run.gone" not in fixed
    assert fixed["train.epochs"] == epochs  # the schema's default and rule, the meaning kept
    assert fixed["data.loader_workers"].meaning == config_docs.field_comments(DataConfig)["loader_workers"]
    assert fixed["data.loader_workers"].meaning.startswith("DataLoader processes per rank")  # its comment in config.py
    assert {k: r for k, r in fixed.items() if k != "data.loader_workers"} == \
        {k: r for k, r in rows.items() if k != "data.loader_workers"}
    assert config_docs.main([str(DOCS / "config.md"), "--check"]) == 0


# ----------------------------------------------------------------- links

def prose(text: str) -> str:
    """The page without its code blocks and inline code (a link there is an example, not a link)."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))


def anchors(text: str) -> set[str]:
    """The anchors GitHub makes of a page's headings (lower case, punctuation
    dropped, spaces as hyphens; a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), re.M):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_anchors_are_githubs():
    assert anchors("# A, b: `c`-d\n## A, b: `c`-d\n```\n# not a heading\n```\n") == {"a-b-c-d", "a-b-c-d-1"}


def test_every_relative_link_of_the_readme_and_docs_points_to_a_file_and_heading_that_exist():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", prose(page.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: {target}"
            if not file.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
                broken.append(f"{where} (no such heading)")
    assert broken == []


def test_the_readme_lists_every_docs_page():
    listed = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", README.read_text()))
    assert listed == {p.name for p in DOCS.glob("*.md")}


def test_the_data_page_keeps_room_for_the_table_of_prepare_sources():
    page = (DOCS / "data.md").read_text()
    assert page.count("<!-- prepare-sources:begin -->") == page.count("<!-- prepare-sources:end -->") == 1


# ----------------------------------------------------------------- docs/cli.md

def commands(parser: argparse.ArgumentParser, prefix: str = "dist-train") -> dict[str, argparse.ArgumentParser]:
    """Every command of the parser ("dist-train slurm submit" included) and its own parser."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = commands(sub, f"{prefix} {name}")
                found.update(nested or {f"{prefix} {name}": sub})
    return found


def cli_sections() -> dict[str, str]:
    page = (DOCS / "cli.md").read_text()
    parts = re.split(r"^### (dist-train [\w ]+?)\s*$", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_command_and_option_of_the_cli_is_in_docs_cli():
    sections = cli_sections()
    parsers = commands(build_parser())
    assert sorted(set(parsers) - set(sections)) == [], "commands without a section in docs/cli.md"
    missing = [f"{command} {option}" for command, parser in parsers.items() for action in parser._actions
               for option in action.option_strings if option.startswith("--") and option != "--help"
               and not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", sections[command])]
    assert missing == [], "options missing from their command's section of docs/cli.md"


def test_docs_cli_names_only_commands_the_cli_has():
    parsers = commands(build_parser())
    assert sorted(set(cli_sections()) - set(parsers)) == []
    page = (DOCS / "cli.md").read_text()
    listed = {" ".join(line.split()[:2]) for block in re.findall(r"^```\n(.*?)^```", page, flags=re.S | re.M)
              for line in block.splitlines() if line.startswith("dist-train ")}
    known = {" ".join(c.split()[:2]) for c in parsers}
    assert sorted(listed - known) == []


# ----------------------------------------------------------------- the README's commands and maps

def test_ci_runs_the_readmes_test_command():
    readme = README.read_text()
    test_command = re.search(r"^# 2\. .*\n(.+)$", readme, re.M).group(1).strip()
    ci = (Path(REPO) / ".ci" / "run").read_text()
    ci_command = next(line.strip() for line in ci.splitlines() if "pytest" in line and "pip install" in line)
    assert ci_command.replace("python -m pip", "pip").replace(" -q", "") == test_command


def section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def tracked_top_level() -> set[str]:
    try:
        files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return {f.split("/")[0] for f in files.splitlines() if "/" in f and not f.startswith(".")}


def test_the_readmes_map_names_every_top_level_folder_and_only_paths_that_exist():
    where = section(README.read_text(), "Where things are")
    named = {p.rstrip("/") for p in re.findall(r"`([\w./-]+)`", where) if "/" in p or "." in p}
    assert sorted(p for p in named if not (Path(REPO) / p).exists()) == []
    assert sorted(tracked_top_level() - {p.split("/")[0] for p in named}) == []


def test_docs_development_names_every_module_and_only_modules_that_exist():
    where = section((DOCS / "development.md").read_text(), "Where things are")
    named = set(re.findall(r"`((?:dist_train|launcher)/[\w/]+\.py)`", where))
    on_disk = {str(p.relative_to(REPO)) for package in ("dist_train", "launcher")
               for p in (Path(REPO) / package).rglob("*.py")}
    assert sorted(named - on_disk) == [], "docs/development.md names modules that are gone"
    unnamed = {p for p in on_disk - named if Path(p).name not in ("__init__.py", "__main__.py")}
    assert sorted(unnamed) == [], "modules missing from docs/development.md's Where things are"
