"""The user's own code named in a config: `class_path` (LightningCLI's
convention) and `init_args`.

A class_path is an import path ("mypkg.nets.ResidualMLP", imported from the
Python path) or a file and a name ("/abs/dir/nets.py:ResidualMLP"; the
config makes a relative file absolute against the current directory, as
every relative path in a config).
Naming it runs that code, like any Python import. Every mistake is a
ConfigError naming the key: a module that does not import (and why, and the
Python path searched), a name that is not there, an init_args key the callable
does not take."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dist_train.errors import ConfigError, taken_from


_NOT_THE_USERS = tuple(os.path.realpath(p) + os.sep for p in {
    str(Path(__file__).resolve().parent),  # dist_train itself
    str(Path(importlib.util.find_spec("torch").origin).resolve().parent),  # type: ignore[union-attr]
    sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]})


def place(exc: BaseException) -> str:
    """Where in the user's code `exc` was raised: "at nets.py:43 in forward"
    (the innermost frame outside dist_train, torch and Python's own library;
    a path under the current directory is shown relative to it), or "" when
    no frame is the user's. A syntax error names its own line."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"at {_shown(exc.filename)}:{exc.lineno}"
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        file = os.path.realpath(frame.filename)
        if frame.filename.startswith("<") or file.startswith(_NOT_THE_USERS):
            continue
        return f"at {_shown(frame.filename)}:{frame.lineno} in {frame.name}"
    return ""


def failure(exc: BaseException) -> str:
    """`exc` for a message: "ValueError: bad value (at nets.py:43 in forward)"."""
    where = place(exc)
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" + (f" ({where})" if where else "")


def _shown(file: str) -> str:
    path = Path(file).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def resolve_callable(key: str, class_path: str) -> Callable[..., Any]:
    """The class or function `class_path` names; `key` is its config key."""
    if ":" in class_path:
        file, name = class_path.rsplit(":", 1)
        module = _module_from_file(key, Path(file))
        where = file
    else:
        module_name, _, name = class_path.rpartition(".")
        if not module_name:
            raise ConfigError(key, f"{class_path!r} names no module", "use package.module.Name or file.py:Name")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            path = ", ".join(p or "." for p in sys.path[:6]) + (", ..." if len(sys.path) > 6 else "")
            raise ConfigError(key, f"cannot import module {module_name!r} to find {name!r} ({exc})",
                              f"install it, or put its directory on PYTHONPATH (searched: {path}); a file next to "
                              f"the config can be named file.py:{name}") from None
        except Exception as exc:  # the module itself raised while it ran
            raise ConfigError(key, f"importing module {module_name!r} failed: {failure(exc)}") from None
        where = module_name
    found = getattr(module, name, None)
    if found is None:
        names = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ConfigError(key, f"{where} has no {name!r}", f"it defines: {', '.join(names[:12]) or 'nothing callable'}")
    if not callable(found):
        raise ConfigError(key, f"{where}:{name} is a {type(found).__name__}, not a class or function")
    return found


def _module_from_file(key: str, file: Path) -> Any:
    if not file.is_file():
        raise ConfigError(key, f"file {str(file)!r} does not exist{taken_from(file)}",
                          "every node must see it (a shared file system)")
    # one module per file, under a name of its own: loading it twice (the data
    # and the model in one file) gives the same objects
    name = f"dist_train_user_{file.stem}_{hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ConfigError(key, f"{str(file)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: classes defined there must be importable (pickling, workers)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(key, f"running {str(file)!r} failed: {failure(exc)}") from None
    return module


def call_with(key: str, target: Callable[..., Any], init_args: dict[str, Any], offered: dict[str, Any]) -> Any:
    """Call `target(**init_args)`, adding each of `offered` (input_shape,
    num_classes, ...) that its signature asks for and init_args does not set."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature: call it as given
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [n for n, p in params.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                            inspect.Parameter.KEYWORD_ONLY)]
    unknown = [k for k in init_args if k not in accepted and not takes_any and params]
    if unknown:
        raise ConfigError(f"{key.rsplit('.', 1)[0]}.init_args.{unknown[0]}",
                          f"is not a parameter of {getattr(target, '__qualname__', target)}",
                          f"it takes: {', '.join(accepted) or 'no arguments'}")
    kwargs = dict(init_args)
    for name, value in offered.items():
        if name in accepted and name not in kwargs:
            kwargs[name] = value
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in kwargs
               and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    if missing:
        raise ConfigError(f"{key.rsplit('.', 1)[0]}.init_args", f"does not give {missing[0]!r}, which "
                          f"{getattr(target, '__qualname__', target)} needs",
                          f"set {key.rsplit('.', 1)[0]}.init_args.{missing[0]}")
    try:
        return target(**kwargs)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(key, f"calling {getattr(target, '__qualname__', target)}(**init_args) failed: "
                          f"{failure(exc)}") from exc
