"""Whose code a stack frame is, for the reports that point at a place: the
user's ("yours"), dist-train's ("ours"), torch's, or Python's (the standard
library and installed packages)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch

_OURS = (str(Path(__file__).resolve().parent.parent / "dist_train"), str(Path(__file__).resolve().parent.parent / "launcher"))
_TORCH = str(Path(torch.__file__).resolve().parent)
_PYTHON = tuple({str(Path(p).resolve()) for p in (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])})
_LIBRARIES = tuple({str(Path(p).resolve()) for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])})


def whose(filename: str) -> str:
    """"yours", "ours" (dist-train), "torch" or "python" (the standard library
    and installed packages)."""
    path = str(Path(filename).resolve()) if not filename.startswith("<") else filename
    if path.startswith(_OURS):
        return "ours"
    if path.startswith(_TORCH):
        return "torch"
    if path.startswith(_LIBRARIES) or path.startswith(_PYTHON) or filename.startswith("<"):
        return "python"
    return "yours"
