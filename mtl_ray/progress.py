"""Progress on stderr: what a long command is doing while it works, one line at a time.

Training commands print a line per epoch of each run (`epoch_line`); commands that loop over many
items (synth, convert, `validate --full`) count them with a `Counter`, a bar redrawn in place on a
terminal and a plain line at every tenth otherwise, so logs stay readable. `--quiet` (`set_quiet`)
silences all of it; errors and results are not progress and are printed regardless. stdout stays
for results (`--json -`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from mtl_ray.result import plural

T = TypeVar("T")

_quiet = False
EPOCH_KEYS = ("epoch", "train_loss", "mean_auroc", "train_images_per_s")
"""The keys of an epoch's report that `epoch_line` shows."""


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def say(line: str) -> None:
    """Print one progress line on stderr, unless --quiet."""
    if not _quiet:
        print(line, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """42s, 3m05s, 1h02m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def epoch_line(name: str, metrics: Mapping[str, Any], epochs: int, elapsed: float, done: int) -> str:
    """`name` epoch k/N: train loss, validation mean AUROC, images/s, elapsed, and the ETA from the
    `done` epochs this process has watched in `elapsed` seconds."""
    epoch = int(metrics["epoch"])
    auroc = metrics.get("mean_auroc")
    eta = elapsed / max(done, 1) * max(epochs - epoch, 0)
    return (
        f"{name}: epoch {epoch}/{epochs}  loss {metrics['train_loss']:.4f}  "
        f"val mean AUROC {'-' if auroc is None else f'{auroc:.3f}'}  "
        f"{metrics['train_images_per_s']:,.0f} img/s  elapsed {duration(elapsed)}  ETA {duration(eta)}"
    )


class EpochPrinter:
    """Prints `epoch_line` for each epoch report of one run, timing it from construction."""

    def __init__(self, name: str, epochs: int) -> None:
        self.name = name
        self.epochs = epochs
        self.started = time.perf_counter()
        self.done = 0

    def __call__(self, metrics: Mapping[str, Any]) -> None:
        self.done += 1
        say(epoch_line(self.name, metrics, self.epochs, time.perf_counter() - self.started, self.done))


class RunProgress(EpochPrinter):
    """A training run's lines: each epoch (`EpochPrinter`), and each start of its worker group after
    the first (a restart from its last checkpoint, after a lost worker or node) or from a checkpoint
    (a resumed run), with the number of workers. Reports with "started" ({"epoch", "step", "workers"})
    come from the workers; it counts the restarts and the first epoch run in this command."""

    def __init__(self, name: str, epochs: int) -> None:
        super().__init__(name, epochs)
        self.starts = 0
        self.first_epoch: int | None = None

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)

    def __call__(self, metrics: Mapping[str, Any]) -> None:
        if "started" not in metrics:
            epoch = int(metrics["epoch"])
            self.first_epoch = epoch if self.first_epoch is None else min(self.first_epoch, epoch)
            super().__call__(metrics)
            return
        start = metrics["started"]
        self.starts += 1
        resumed = bool(start["epoch"] or start["step"])
        where = f"from the checkpoint after epoch {start['epoch']}" + (
            f", step {start['step']}" if start["step"] else ""
        )
        workers = plural(start["workers"], "worker")
        if self.starts > 1:
            say(f"{self.name}: worker group restarted {where if resumed else 'from scratch'}, {workers}")
        elif resumed:
            say(f"{self.name}: resumed {where}, {workers}")


class Counter:
    """`what`: n/total, as a bar on a terminal or a plain line at each tenth of `total`."""

    def __init__(self, what: str, total: int, stream=None) -> None:
        self.what = what
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.n = 0
        self.shown = 0
        self.started = time.perf_counter()

    def each(self, items: Iterable[T]) -> Iterator[T]:
        """`items`, counting each one once it has been dealt with."""
        for item in items:
            yield item
            self.advance()

    def advance(self, n: int = 1) -> None:
        self.n = min(self.n + n, self.total)
        tenth = self.n * 10 // self.total
        if _quiet or (not self.tty and tenth == self.shown):
            return
        self.shown = tenth
        elapsed = duration(time.perf_counter() - self.started)
        if self.tty:
            filled = self.n * 30 // self.total
            bar = "#" * filled + "." * (30 - filled)
            end = "\n" if self.n == self.total else ""
            print(f"\r{self.what} [{bar}] {self.n}/{self.total} {elapsed}", end=end, file=self.stream, flush=True)
        else:
            print(f"{self.what}: {self.n}/{self.total} ({elapsed})", file=self.stream, flush=True)
