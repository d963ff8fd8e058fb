"""What a run's remote processes tell the driver while it waits on Ray: reports (an epoch's numbers,
rows scored) and the first user error (bad input, a diverging run).

Ray Train workers and Ray Data actors raise errors that reach the driver wrapped, often without
their cause; what the user must read goes through an `Inbox` instead, an actor the driver makes and
passes to them. `relayed` polls it on a thread while the driver blocks (`trainer.fit()`, a Ray Data
write), so progress lines appear as the work goes on.
"""

from __future__ import annotations

import _thread
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import ray

from mtl_ray.errors import UserError, user_error_in

POLL_S = 1.0
T = TypeVar("T")


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


def new_inbox():
    """An `Inbox` on this process's node, so that losing a worker node cannot take it along."""
    from mtl_ray.cluster.runtime import on_this_node

    return Inbox.options(**on_this_node()).remote()


class Relay:
    """What the relay thread found: why the run was stopped, when a watch stopped it."""

    stopped: str | None = None


@contextlib.contextmanager
def relayed(
    inbox, on_report: Callable[[dict], None] | None, watch: Callable[[], str | None] | None = None
) -> Iterator[Relay]:
    """Call `on_report` on this process with each report while the block runs, and once more for the
    last ones when it ends; `watch`, called at each poll, may return a reason to stop the block, which
    it then interrupts (as Ctrl-C would: Ray Train and Ray Data stop their work on it)."""
    relay = Relay()
    if on_report is None and watch is None:
        yield relay
        return
    stop = threading.Event()

    def run() -> None:
        while True:
            ended = stop.wait(POLL_S)
            for report in ray.get(inbox.take.remote()):
                if on_report:
                    on_report(report)
            if ended:
                return
            if watch and relay.stopped is None:
                relay.stopped = watch()
                if relay.stopped:
                    _thread.interrupt_main()

    watcher = threading.Thread(target=run, daemon=True)
    watcher.start()
    try:
        yield relay
    finally:
        stop.set()
        watcher.join()


def reported(
    inbox,
    on_report: Callable[[dict], None] | None,
    work: Callable[[], T],
    failure_of: Callable[[T], BaseException | None] = lambda _: None,
    watch: Callable[[], str | None] | None = None,
) -> T:
    """`work()` while the inbox's reports are relayed (`relayed`), then the inbox closed. A user error
    that a remote process put there is raised as one `UserError`, ahead of the exception Ray wrapped
    it in; another failure (raised, or `failure_of` the result) as the user error inside it, if any;
    a stop by `watch` as its reason."""
    with relayed(inbox, on_report, watch) as relay:
        try:
            result = work()
            failure = failure_of(result)
        except KeyboardInterrupt:
            if relay.stopped is None:
                raise
            result, failure = None, None
        except Exception as exc:  # a UserError raised in a Ray Data task or actor arrives wrapped
            result, failure = None, exc
    try:
        message = ray.get(inbox.first.remote())
        ray.kill(inbox)
    except ray.exceptions.RayActorError:  # it went with its node: whatever it held, the run's outcome stands
        message = None
    if message or relay.stopped:
        raise UserError(message or relay.stopped)
    if failure is not None:
        raise user_error_in(failure) or failure from None
    return result
