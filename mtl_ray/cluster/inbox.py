"""What a run's remote processes tell the driver while it waits on Ray: reports (an epoch's numbers,
rows scored) and the first user error (bad input, a diverging run).

Ray Train workers and Ray Data actors raise errors that reach the driver wrapped, often without
their cause; what the user must read goes through an `Inbox` instead, an actor the driver makes and
passes to them. `relayed` polls it on a thread while the driver blocks (`trainer.fit()`, a Ray Data
write), so progress lines appear as the work goes on.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import ray

POLL_S = 1.0


@ray.remote(num_cpus=0)
class Inbox:
    """Reports in arrival order, taken by the driver, and the first user error.

    Ray Train restarts the worker group after any worker error (`max_failures`); the restarted
    workers find the error here and stop at once instead of failing the same way again.
    """

    def __init__(self) -> None:
        self.message: str | None = None
        self.reports: list[dict] = []

    def put(self, message: str) -> None:
        self.message = self.message or message

    def first(self) -> str | None:
        return self.message

    def report(self, metrics: dict) -> None:
        self.reports.append(metrics)

    def take(self) -> list[dict]:
        taken, self.reports = self.reports, []
        return taken


@contextlib.contextmanager
def relayed(inbox, on_report: Callable[[dict], None] | None) -> Iterator[None]:
    """Call `on_report` on this process with each report while the block runs, and once more for the
    last ones when it ends."""
    if on_report is None:
        yield
        return
    stop = threading.Event()

    def relay() -> None:
        while True:
            ended = stop.wait(POLL_S)
            for report in ray.get(inbox.take.remote()):
                on_report(report)
            if ended:
                return

    watcher = threading.Thread(target=relay, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
