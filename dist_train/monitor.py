"""One notion of "better" for a monitored metric, shared by checkpoint
retention, the best value in the logs, early stopping and the plateau
schedule: a metric, its direction (min for losses and errors, max for
accuracy and R^2) and the margin an improvement must clear."""

from __future__ import annotations

from dataclasses import dataclass

#: metrics where higher is better; every other one (losses, errors) is lower-is-better
HIGHER_IS_BETTER = ("accuracy", "r2")


def metric_mode(metric: str, mode: str = "auto") -> str:
    """"min" or "max" for `metric`; `mode` other than "auto" wins."""
    if mode != "auto":
        return mode
    return "max" if metric.endswith(HIGHER_IS_BETTER) else "min"


@dataclass(frozen=True)
class Monitor:
    metric: str
    mode: str = "auto"  # auto: from the metric's name
    min_delta: float = 0.0  # an improvement must be larger than this

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", metric_mode(self.metric, self.mode))

    def improves(self, value: float, best: float | None) -> bool:
        """Whether `value` beats `best` (None: nothing to beat yet) by more than min_delta."""
        if best is None:
            return True
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta
