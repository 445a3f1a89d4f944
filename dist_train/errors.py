"""Errors that speak to the user: what is wrong, with what value, and what to do."""


class DistTrainError(Exception):
    """A mistake the user can fix (bad config, missing file, ...). The CLI prints
    its message without a traceback and exits with status 2."""


class ConfigError(DistTrainError):
    """A config key, type or value that is not allowed."""

    def __init__(self, key: str, message: str, hint: str | None = None) -> None:
        self.key = key
        text = f"config key '{key}': {message}"
        if hint:
            text += f" (hint: {hint})"
        super().__init__(text)
