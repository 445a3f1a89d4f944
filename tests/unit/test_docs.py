"""The docs stay true: docs/config.md's key reference against the typed config
(every key, its type, default and resume rule, and a meaning for each)."""

import dataclasses
from pathlib import Path

from dist_train import config_docs
from dist_train.config import DataConfig
from tests.conftest import REPO

DOCS = Path(REPO) / "docs"


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
