"""The layer rules: import contracts checked with import-linter (pyproject.toml's
[tool.importlinter]), and collectives called only where they belong."""

import io
import shutil
import subprocess
import tokenize
from pathlib import Path

import pytest

from tests.conftest import REPO

#: where torch.distributed may be used: the communicator and the process group
#: (with its check of every collective, dist.check_collectives), the strategies
#: (DDP, DeepSpeed) and the synchronized batch-norm kernel
COLLECTIVES_ALLOWED = {"comm.py", "distributed.py", "collective_check.py", "sync_batchnorm.py", "strategy"}


def test_import_contracts_hold():
    if shutil.which("lint-imports") is None:
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]')")
    proc = subprocess.run(["lint-imports"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def code_names(path: Path) -> str:
    """The file's code without comments and strings (docstrings may name torch.distributed)."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return " ".join(t.string for t in tokens if t.type not in (tokenize.COMMENT, tokenize.STRING))


def test_collectives_are_called_only_through_the_communicator_the_strategies_and_sync_batch_norm():
    library = Path(REPO) / "dist_train"
    offenders = []
    for path in sorted(library.rglob("*.py")):
        relative = path.relative_to(library)
        if relative.parts[0] in COLLECTIVES_ALLOWED:
            continue
        code = code_names(path)
        if "torch . distributed" in code or "torch.distributed" in code.replace(" . ", "."):
            offenders.append(str(relative))
    assert offenders == []


def test_the_library_writes_the_environment_in_one_place_only():
    """A worker process sets itself up in dist_train/worker_env.py (SLURM's
    ranks as torch's, LOCAL_RANK, NCCL's flight recorder), for `dist-train run`,
    launch's workers and dist_train.fit alike; nothing else in the library
    writes the environment, and only slurm_env.py reads SLURM's variables."""
    library = Path(REPO) / "dist_train"
    writes = sorted(str(p.relative_to(library)) for p in library.rglob("*.py")
                    if any(w in code_names(p).replace(" ", "") for w in ("os.environ[", "os.environ.update",
                                                                          "os.environ.setdefault", "os.putenv")))
    # os.environ[...] as a read is allowed in principle; none of the library's reads index it
    assert writes == ["worker_env.py"]
    slurm = sorted(str(p.relative_to(library)) for p in library.rglob("*.py") if "SLURM_" in p.read_text())
    assert slurm == ["slurm_env.py"]


def test_only_the_task_knows_its_name():
    """"classification"/"regression" are compared nowhere but dist_train/tasks.py:
    everything else asks the Task (what it classifies, its dtype, losses, metrics)."""
    import re

    compared = re.compile(r"""(==|!=|\bin)\s*\(?\s*["'](classification|regression)["']""")
    found = [f"{path.relative_to(REPO)}:{n}" for package in ("dist_train", "launcher")
             for path in sorted((Path(REPO) / package).rglob("*.py")) if path.name != "tasks.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if compared.search(line)]
    assert found == []
