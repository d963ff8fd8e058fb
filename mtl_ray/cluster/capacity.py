"""Waiting for what the cluster does not have yet, saying so, for a bounded time.

A request the cluster cannot hold (GPUs before an autoscaler has added GPU nodes, CPUs after a
node was lost) fails at once on a Ray that mtl-ray started on this machine, which cannot grow. On a
cluster this process joined, which may (KubeRay, `ray up`), the run asks Ray's autoscaler for the
workers' resources and waits `TrainConfig.resource_wait_s` (default `JOINED_WAIT_S`), printing
what it waits for; a run that loses a node mid-way and cannot go on with the nodes left says so
the same way while Ray Train waits for a replacement, and gives up after the same time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

from mtl_ray import progress
from mtl_ray.cluster.resources import ResourcePlan, holds
from mtl_ray.cluster.runtime import alive_nodes
from mtl_ray.errors import UserError

JOINED_WAIT_S = 600.0
POLL_S = 2.0
T = TypeVar("T")


def wait_s(configured: float | None) -> float:
    """The configured wait, else `JOINED_WAIT_S` on a joined cluster (`RAY_ADDRESS`) and 0 locally."""
    if configured is not None:
        return configured
    return JOINED_WAIT_S if os.environ.get("RAY_ADDRESS") else 0.0


def ask_autoscaler(bundles: list[dict[str, float]]) -> None:
    """Ray's autoscaler's standing request: grow until the cluster could hold all of `bundles` at
    once (`[]` takes it back). Nodes already there count; a cluster that cannot grow ignores it."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


def when_ready(make: Callable[[list[dict[str, float]]], T], wait: float, ask: list[dict[str, float]]) -> T:
    """`make(alive nodes)`; when it finds the cluster short (a `UserError`) and `wait` > 0, ask Ray's
    autoscaler for the `ask` bundles and try again every `POLL_S` for up to `wait` seconds."""
    try:
        return make(alive_nodes())
    except UserError as exc:
        if wait <= 0:
            raise
        short = str(exc)
    ask_autoscaler(ask)
    progress.say(
        f"waiting for resources: {short}; asked Ray's autoscaler for {len(ask)} x {ask[0]} "
        f"(up to {wait:.0f} s, --resource-wait)"
    )
    started = time.monotonic()
    while time.monotonic() - started < wait:
        time.sleep(POLL_S)
        try:
            made = make(alive_nodes())
        except UserError:
            continue
        progress.say(f"resources arrived after {time.monotonic() - started:.0f} s")
        ask_autoscaler([])  # the run's own placement group holds the nodes from here
        return made
    ask_autoscaler([])
    raise UserError(f"{short}; waited {wait:.0f} s (--resource-wait) and the cluster did not grow")


class NodeWatch:
    """Called on the driver every few seconds while a run goes on: whether the nodes alive can still
    hold its workers. When they cannot (a node was lost and Ray Train waits for room), it says so
    with the numbers; after `wait` seconds of that it returns why the run should stop."""

    def __init__(self, name: str, plan: ResourcePlan, wait: float):
        self.name, self.plan, self.wait = name, plan, wait
        self.short_since: float | None = None

    def __call__(self) -> str | None:
        nodes = alive_nodes()
        if holds(self.plan, nodes):
            if self.short_since is not None:
                progress.say(f"{self.name}: the cluster can hold the workers again ({len(nodes)} nodes)")
            self.short_since = None
            return None
        need = self.plan.min_workers or self.plan.workers
        each = f"{self.plan.cpus_per_worker:g} CPU" + (" and 1 GPU" if self.plan.use_gpu else "")
        short = (
            f"{need} worker(s) of {each} each do not fit on the {len(nodes)} node(s) alive "
            f"(a node was lost?), each keeping CPUs for Ray Data"
        )
        now = time.monotonic()
        if self.short_since is None:
            self.short_since = now
            progress.say(f"{self.name}: waiting for a node: {short}; up to {self.wait:.0f} s (--resource-wait)")
        if now - self.short_since >= self.wait:
            return f"{self.name}: {short}; waited {self.wait:.0f} s (--resource-wait) for a node to join"
        return None
