"""Errors that speak to the user: what is wrong, with what value, and what to
do; and the exit statuses every command uses."""

#: exit statuses of every dist-train command
EXIT_OK = 0
EXIT_FAILED = 1  # training failed (non-finite values, a lost peer, a bug)
EXIT_USAGE = 2  # a usage or config mistake, found before anything changed
EXIT_STALLED = 3  # the ranks stopped making progress together (a stall, a lost peer, diverged collectives): see run.dir/hang
EXIT_RESUME = 75  # stopped on request after saving a checkpoint: run the same command again to resume


class DistTrainError(Exception):
    """A mistake the user can fix (bad config, missing file, ...). The CLI prints
    its message without a traceback and exits with `exit_code`."""

    exit_code = 2


class TrainingFailed(DistTrainError):
    """Training cannot go on (non-finite values, a lost peer); exit status 1."""

    exit_code = 1


class ConfigError(DistTrainError):
    """A config key, type or value that is not allowed."""

    def __init__(self, key: str, message: str, hint: str | None = None) -> None:
        self.key, self.message, self.hint = key, message, hint
        text = f"config key '{key}': {message}"
        if hint:
            text += f" (hint: {hint})"
        super().__init__(text)

    def __reduce__(self) -> tuple:  # whole across processes (a DataLoader reader's error travels pickled)
        return type(self), (self.key, self.message, self.hint)


#: problems named in one message before the rest are only counted
MAX_NAMED = 10


def name_some(items: list[str], limit: int = MAX_NAMED) -> str:
    """Up to `limit` problems joined by "; ", then how many more ("a; b; and 3
    more"): one message names every problem a user must fix, without growing
    without bound."""
    more = len(items) - limit
    return "; ".join(items[:limit]) + (f"; and {more} more" if more > 0 else "")


def taken_from(path: object) -> str:
    """For a message about a path: where a relative one was taken from (the
    one rule for every path in a config, an override or a command: the
    directory the command runs in); nothing for an absolute one."""
    import os

    text = os.fspath(path)  # type: ignore[arg-type]
    if not text or os.path.isabs(text):
        return ""
    return f" (a relative path, taken from the current directory {os.getcwd()})"
