"""Progress on stderr: stdout carries results (`run_id=...`, JSON, paths) for scripts.

On a terminal, rich's bars. Elsewhere (a log file, `nohup`, a batch job) rich draws a bar only
when it ends, so a long study would log nothing between its first and last line: there, plain
lines say how far it got (`EpochLines`: a training's epochs, at most every `PLAIN_INTERVAL_S`;
`trial_progress`: each trial of a study as it ends), each with the time elapsed.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import Progress, ProgressColumn

T = TypeVar("T")
EpochCallback = Callable[[dict[str, float]], None]
# A line at most this often when stderr is a log: a study's 30 trials stay a page, not a flood,
# and a trial that runs for minutes still shows it is alive.
PLAIN_INTERVAL_S = 30.0


def progress_bar(*columns: str | ProgressColumn, enabled: bool = True, **kwargs: Any) -> Progress:
    """A rich `Progress` writing to stderr (default columns when none are given)."""
    console = Console(stderr=True)
    # Off a terminal a transient bar draws nothing but, as it ends, a blank line.
    disable = not enabled or (kwargs.get("transient", False) and not console.is_terminal)
    return Progress(*columns, console=console, disable=disable, **kwargs)


def track(items: Iterable[T], description: str, enabled: bool = True) -> Iterator[T]:
    items = list(items)
    with progress_bar(enabled=enabled, transient=True) as bar:
        yield from bar.track(items, description=description, total=len(items))


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal, as rich decides it (`TTY_COMPATIBLE`, `FORCE_COLOR`)."""
    return Console(stderr=True).is_terminal


def elapsed(seconds: float) -> str:
    """`42s`, `3m07s`, `1h02m`."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # a log read with `tail -f` sees it now


class EpochLines:
    """An epoch callback that writes one plain line per epoch on stderr, at most every
    `interval_s` seconds (0: every epoch): `trial 3  epoch   7  train_loss 0.4123  val_loss
    0.3812  val_dice 0.8123  elapsed 42s`, the time counted from this object's creation."""

    def __init__(
        self,
        label: str = "",
        interval_s: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prefix = f"{label}  " if label else ""
        self.interval_s = interval_s
        self.clock = clock
        self.started = clock()
        self.said: float | None = None  # when the last line was written

    def __call__(self, metrics: dict[str, float]) -> None:
        now = self.clock()
        if self.said is not None and now - self.said < self.interval_s:
            return
        self.said = now
        _say(
            f"{self.prefix}epoch {int(metrics['epoch']):3d}  "
            f"train_loss {metrics['train_loss']:.4f}  val_loss {metrics['val_loss']:.4f}  "
            f"val_dice {metrics['val_dice']:.4f}  elapsed {elapsed(now - self.started)}"
        )


def epoch_lines(on_epoch: EpochCallback, label: str, enabled: bool = True) -> EpochCallback:
    """`on_epoch`, writing `EpochLines` first when stderr is not a terminal (a terminal has
    the bars); the line comes before `on_epoch`, which may stop the training (a pruned trial)."""
    if not enabled or stderr_is_terminal():
        return on_epoch
    lines = EpochLines(label)

    def both(metrics: dict[str, float]) -> None:
        lines(metrics)
        on_epoch(metrics)

    return both


@contextmanager
def trial_progress(
    total: int | None, enabled: bool = True, clock: Callable[[], float] = time.monotonic
) -> Iterator[Callable[[Any, Any], None]]:
    """An Optuna callback (`study.optimize(callbacks=[...])`) showing a study's trials as they
    end: on a terminal a bar (`trials  best 0.8123  pruned 1  failed 0`, the trials done of
    `total`, the time), elsewhere one line per trial: `trial 3 COMPLETE  value 0.8123  best 0.8123
    (trial 3)  elapsed 2m10s`; a pruned trial names its last epoch."""
    from rich.progress import MofNCompleteColumn, TimeElapsedColumn

    started, terminal = clock(), stderr_is_terminal()
    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeElapsedColumn())
    with progress_bar(*columns, enabled=enabled and terminal) as bar:
        task = bar.add_task("trials", total=total)

        def trial_ended(study: Any, trial: Any) -> None:
            if not enabled:
                return
            try:
                best_trial = study.best_trial  # one read of the storage for its value and number
                best, of = f"{best_trial.value:.4f}", f" (trial {best_trial.number})"
            except ValueError:  # no trial completed yet
                best, of = "-", ""
            if terminal:
                states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
                counts = f"pruned {states['PRUNED']}  failed {states['FAIL']}"
                bar.update(task, advance=1, description=f"trials  best {best}  {counts}")
                return
            state, outcome, step = trial.state.name, "", trial.last_step
            if state == "COMPLETE":
                outcome = f"value {trial.value:.4f}"
            elif state == "PRUNED" and trial.intermediate_values:
                outcome = f"at epoch {step}, value {trial.intermediate_values[step]:.4f}"
            parts = [f"trial {trial.number} {state}", outcome, f"best {best}{of}"]
            _say("  ".join([*filter(None, parts), f"elapsed {elapsed(clock() - started)}"]))

        yield trial_ended
